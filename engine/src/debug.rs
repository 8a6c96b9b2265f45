//! The inspection forwards behind `muddit debug ...`: named tensors in, named tensors out,
//! in the reference's layouts.

use crate::error::{Error, Result};
use crate::mmdit::{to_nchw, Mmdit, MmditInput, MICRO_CONDS};
use crate::tensor_io::{HostTensor, TensorFile};
use std::collections::BTreeMap;

/// Runs the transformer on `image_tokens [B,h,w]`, `encoder_hidden_states [B,L,J]`,
/// `pooled_projections [B,P]`, `timestep [1]`, `micro_conds [B,5]`; returns `image_logits
/// [B,V,h,w]` and, with a text head, `text_logits [B,L,Vt]`.
pub fn transformer_forward(
    model: &Mmdit,
    inputs: &TensorFile,
) -> Result<BTreeMap<String, HostTensor>> {
    let (ids_shape, ids) = inputs.i64("image_tokens", 3, "[B,h,w]")?;
    let (text_shape, text) = inputs.f32("encoder_hidden_states", 3, "[B,L,joint_attention_dim]")?;
    let (_, pooled) = inputs.f32("pooled_projections", 2, "[B,pooled_projection_dim]")?;
    let (t_shape, t) = inputs.f32("timestep", 1, "[1]")?;
    let (micro_shape, micro) = inputs.f32("micro_conds", 2, "[B,5]")?;
    let (b, h, w) = (ids_shape[0], ids_shape[1], ids_shape[2]);
    if t_shape != [1] {
        return Err(Error::input(
            "timestep",
            format!("expected shape [1], found {t_shape:?}"),
        ));
    }
    if text_shape[0] != b || micro_shape != [b, MICRO_CONDS] {
        return Err(Error::input(
            "encoder_hidden_states",
            format!("batch sizes differ: image_tokens {ids_shape:?}, encoder_hidden_states {text_shape:?}, micro_conds {micro_shape:?}"),
        ));
    }
    let input = MmditInput {
        image_tokens: ids,
        batch: b,
        height: h,
        width: w,
        encoder_hidden_states: text,
        text_len: text_shape[1],
        pooled_projections: pooled,
        timestep: t[0],
        micro_conds: micro,
    };
    let out = model.forward(&input)?;
    let v = model.cfg.codebook_size;
    let mut tensors = BTreeMap::new();
    tensors.insert(
        "image_logits".to_string(),
        HostTensor::f32(vec![b, v, h, w], to_nchw(&out.image_logits, b, h, w, v)),
    );
    if let (Some(logits), Some(vt)) = (out.text_logits, model.cfg.tokenizer_vocab_size) {
        tensors.insert(
            "text_logits".to_string(),
            HostTensor::f32(vec![b, text_shape[1], vt], logits),
        );
    }
    Ok(tensors)
}
