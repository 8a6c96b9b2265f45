//! The shapes world of the default model (`tools/shapes/world.py`): its vocabulary, a scene as
//! a key, and the deterministic checker that judges generated pixels.
//!
//! The vocabulary and the checker's thresholds are read from the evaluation set's `world`
//! object, which the Python generator writes: the generator is the single source of truth.
//!
//! Checker: each pixel is background when its largest channel is below `dark`, else the palette
//! color of nearest chromaticity (the pixel divided by its largest channel). 4-connected regions
//! of one color with at least `min_area` pixels are the shapes. A shape's kind comes from the fill
//! of its bounding box (a square fills it, a circle pi/4 of it, a triangle half), its position
//! from the bounding box's center: the nearest named position (one shape) or the pair centers
//! (two shapes, left to right), each within `max_offset` pixels.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
pub struct Position {
    pub x: f64,
    pub y: f64,
    pub phrase: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckerParams {
    pub dark: f64,
    pub min_area: usize,
    pub fill_square: f64,
    pub fill_circle: f64,
    pub side_min: usize,
    pub side_max: usize,
    pub max_offset: f64,
}

/// The world's vocabulary, as `world.py --vocab` writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct World {
    pub size: usize,
    pub shapes: Vec<String>,
    /// Insertion order is the Python order; serde_json keeps keys sorted, which is all the
    /// checker needs (it classifies by nearest color, not by index).
    pub colors: BTreeMap<String, [u8; 3]>,
    pub positions: BTreeMap<String, Position>,
    pub pair_centers: Vec<[f64; 2]>,
    pub checker: CheckerParams,
}

/// A scene up to jitter: one shape at a named position, or two shapes left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scene {
    Single {
        shape: String,
        color: String,
        position: String,
    },
    Pair {
        left: (String, String),
        right: (String, String),
    },
}

impl Scene {
    /// From the generator's key: `["single", shape, color, position]` or
    /// `["pair", shape1, color1, shape2, color2]`.
    pub fn from_key(key: &[String]) -> Result<Self> {
        match key {
            [k, s, c, p] if k == "single" => Ok(Scene::Single {
                shape: s.clone(),
                color: c.clone(),
                position: p.clone(),
            }),
            [k, s1, c1, s2, c2] if k == "pair" => Ok(Scene::Pair {
                left: (s1.clone(), c1.clone()),
                right: (s2.clone(), c2.clone()),
            }),
            _ => bail!("not a scene key: {key:?}"),
        }
    }

    /// Number of shapes.
    pub fn count(&self) -> usize {
        match self {
            Scene::Single { .. } => 1,
            Scene::Pair { .. } => 2,
        }
    }

    /// (shape, color) of each shape, left to right.
    pub fn objects(&self) -> Vec<(&str, &str)> {
        match self {
            Scene::Single { shape, color, .. } => vec![(shape, color)],
            Scene::Pair { left, right } => vec![(&left.0, &left.1), (&right.0, &right.1)],
        }
    }

    /// The named position of a single shape; `None` for a pair (always side by side).
    pub fn position(&self) -> Option<&str> {
        match self {
            Scene::Single { position, .. } => Some(position),
            Scene::Pair { .. } => None,
        }
    }
}

impl World {
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let w: World = serde_json::from_value(value.clone()).context("the `world` object")?;
        // The checker knows the geometry of exactly these three kinds, in this order.
        if w.shapes != ["circle", "square", "triangle"]
            || w.colors.is_empty()
            || w.pair_centers.len() != 2
        {
            bail!("the `world` object: expected shapes [circle, square, triangle], colors and 2 pair centers");
        }
        Ok(w)
    }

    /// The caption the world writes for a scene (the tests check the generator's against it;
    /// the edit task prompts with it).
    pub fn caption(&self, scene: &Scene) -> String {
        match scene {
            Scene::Single {
                shape,
                color,
                position,
            } => {
                let phrase = self
                    .positions
                    .get(position)
                    .map(|p| p.phrase.as_str())
                    .unwrap_or("");
                format!("a {color} {shape} {phrase}")
            }
            Scene::Pair { left, right } => format!(
                "a {} {} to the left of a {} {}",
                left.1, left.0, right.1, right.0
            ),
        }
    }

    /// The scene a caption describes, if it is one of the world's sentences.
    pub fn parse_caption(&self, text: &str) -> Option<Scene> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let color = |w: &str| self.colors.contains_key(w);
        let shape = |w: &str| self.shapes.iter().any(|s| s == w);
        match words.as_slice() {
            ["a", c1, s1, "to", "the", "left", "of", "a", c2, s2]
                if color(c1) && shape(s1) && color(c2) && shape(s2) =>
            {
                Some(Scene::Pair {
                    left: (s1.to_string(), c1.to_string()),
                    right: (s2.to_string(), c2.to_string()),
                })
            }
            ["a", c, s, rest @ ..] if color(c) && shape(s) => {
                let phrase = rest.join(" ");
                let position = self.positions.iter().find(|(_, p)| p.phrase == phrase)?.0;
                Some(Scene::Single {
                    shape: s.to_string(),
                    color: c.to_string(),
                    position: position.clone(),
                })
            }
            _ => None,
        }
    }

    /// Judges `[H, W, 3]` 8-bit pixels (row-major, channel last).
    pub fn judge(&self, rgb: &[u8], height: usize, width: usize) -> Judgement {
        let shapes = self.components(rgb, height, width);
        Judgement {
            scene: self.scene_of(&shapes),
            shapes,
        }
    }

    /// The palette index of each pixel, or `None` for background.
    fn classify(&self, rgb: &[u8]) -> Vec<Option<usize>> {
        let palette: Vec<[f64; 3]> = self
            .colors
            .values()
            .map(|c| {
                let m = c.iter().copied().max().unwrap_or(1).max(1) as f64;
                [c[0] as f64 / m, c[1] as f64 / m, c[2] as f64 / m]
            })
            .collect();
        rgb.chunks_exact(3)
            .map(|p| {
                let m = p.iter().copied().max().unwrap_or(0) as f64;
                if m < self.checker.dark {
                    return None;
                }
                let ch = [p[0] as f64 / m, p[1] as f64 / m, p[2] as f64 / m];
                let dist = |q: &[f64; 3]| (0..3).map(|i| (ch[i] - q[i]).powi(2)).sum::<f64>();
                (0..palette.len()).min_by(|&a, &b| dist(&palette[a]).total_cmp(&dist(&palette[b])))
            })
            .collect()
    }

    /// Same-color 4-connected regions of at least `min_area` pixels, in scan order.
    fn components(&self, rgb: &[u8], height: usize, width: usize) -> Vec<Shape> {
        let class = self.classify(rgb);
        let names: Vec<&String> = self.colors.keys().collect();
        let mut seen = vec![false; height * width];
        let mut out = Vec::new();
        for start in 0..height * width {
            let Some(c) = class[start] else { continue };
            if seen[start] {
                continue;
            }
            seen[start] = true;
            let mut stack = vec![start];
            let (mut area, mut x0, mut y0, mut x1, mut y1) = (0usize, width, height, 0, 0);
            while let Some(p) = stack.pop() {
                let (y, x) = (p / width, p % width);
                area += 1;
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x + 1);
                y1 = y1.max(y + 1);
                let mut visit = |q: usize| {
                    if !seen[q] && class[q] == Some(c) {
                        seen[q] = true;
                        stack.push(q);
                    }
                };
                if y + 1 < height {
                    visit(p + width);
                }
                if y > 0 {
                    visit(p - width);
                }
                if x + 1 < width {
                    visit(p + 1);
                }
                if x > 0 {
                    visit(p - 1);
                }
            }
            if area >= self.checker.min_area {
                let (bw, bh) = (x1 - x0, y1 - y0);
                let fill = area as f64 / (bw * bh) as f64;
                let kind = if fill >= self.checker.fill_square {
                    &self.shapes[1]
                } else if fill >= self.checker.fill_circle {
                    &self.shapes[0]
                } else {
                    &self.shapes[2]
                };
                out.push(Shape {
                    color: names[c].clone(),
                    kind: kind.clone(),
                    area,
                    bbox: [x0, y0, x1, y1],
                });
            }
        }
        out
    }

    fn scene_of(&self, shapes: &[Shape]) -> Option<Scene> {
        let p = &self.checker;
        let near = |s: &Shape, x: f64, y: f64| {
            let (cx, cy) = s.center();
            (cx - x).abs() <= p.max_offset && (cy - y).abs() <= p.max_offset
        };
        for s in shapes {
            let (bw, bh) = (s.bbox[2] - s.bbox[0], s.bbox[3] - s.bbox[1]);
            if !(p.side_min..=p.side_max).contains(&bw) || !(p.side_min..=p.side_max).contains(&bh)
            {
                return None;
            }
        }
        match shapes {
            [s] => {
                let (cx, cy) = s.center();
                let (name, pos) = self.positions.iter().min_by(|a, b| {
                    let d = |q: &Position| (q.x - cx).powi(2) + (q.y - cy).powi(2);
                    d(a.1).total_cmp(&d(b.1))
                })?;
                near(s, pos.x, pos.y).then(|| Scene::Single {
                    shape: s.kind.clone(),
                    color: s.color.clone(),
                    position: name.clone(),
                })
            }
            [a, b] => {
                let (l, r) = if a.center().0 <= b.center().0 {
                    (a, b)
                } else {
                    (b, a)
                };
                let [pl, pr] = [self.pair_centers[0], self.pair_centers[1]];
                (near(l, pl[0], pl[1]) && near(r, pr[0], pr[1]) && l.color != r.color).then(|| {
                    Scene::Pair {
                        left: (l.kind.clone(), l.color.clone()),
                        right: (r.kind.clone(), r.color.clone()),
                    }
                })
            }
            _ => None,
        }
    }
}

/// One region the checker found.
#[derive(Debug, Clone)]
pub struct Shape {
    pub color: String,
    pub kind: String,
    pub area: usize,
    /// `[x0, y0, x1, y1)` in pixels.
    pub bbox: [usize; 4],
}

impl Shape {
    fn center(&self) -> (f64, f64) {
        (
            (self.bbox[0] + self.bbox[2]) as f64 / 2.0,
            (self.bbox[1] + self.bbox[3]) as f64 / 2.0,
        )
    }
}

/// What the checker saw: the regions, and the scene they make if they make a valid one.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub shapes: Vec<Shape>,
    pub scene: Option<Scene>,
}

/// Per-attribute agreement of a judged image with the scene it should show.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement {
    pub count: bool,
    pub colors: bool,
    pub kinds: bool,
    pub position: bool,
    pub full: bool,
}

impl Judgement {
    /// Count: as many regions as shapes. Colors and kinds: the regions' left-to-right colors
    /// (kinds) equal the scene's (with the count right). Position: the judged scene's position
    /// equals the expected one (a pair is judged side by side or not at all). Full: the judged
    /// scene is the expected scene.
    /// Every region found, as `"red circle of 300 px in [x0, y0, x1, y1]"`.
    pub fn describe(&self) -> Vec<String> {
        let shape = |s: &Shape| format!("{} {} of {} px in {:?}", s.color, s.kind, s.area, s.bbox);
        self.shapes.iter().map(shape).collect()
    }

    pub fn agreement(&self, want: &Scene) -> Agreement {
        let mut shapes: Vec<&Shape> = self.shapes.iter().collect();
        shapes.sort_by(|a, b| a.center().0.total_cmp(&b.center().0));
        let count = shapes.len() == want.count();
        let objects = want.objects();
        let colors = count && shapes.iter().zip(&objects).all(|(s, o)| s.color == o.1);
        let kinds = count && shapes.iter().zip(&objects).all(|(s, o)| s.kind == o.0);
        let position = match (&self.scene, want) {
            (Some(got), _) => got.position() == want.position() && got.count() == want.count(),
            (None, _) => false,
        };
        Agreement {
            count,
            colors,
            kinds,
            position,
            full: self.scene.as_ref() == Some(want),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn eval_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-eval")
    }

    fn load() -> (World, serde_json::Value) {
        let text = std::fs::read_to_string(eval_dir().join("eval.json")).expect("eval.json");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        (World::from_json(&doc["world"]).expect("world"), doc)
    }

    fn pixels(file: &str) -> Vec<u8> {
        let img = muddit_engine::image_io::load_image(&eval_dir().join(file), 64, 64).expect("png");
        let plane = 64 * 64;
        let data = &img.data;
        (0..plane)
            .flat_map(|p| (0..3).map(move |c| (data[c * plane + p] * 255.0).round() as u8))
            .collect()
    }

    fn key(v: &serde_json::Value) -> Scene {
        let k: Vec<String> = serde_json::from_value(v.clone()).expect("key");
        Scene::from_key(&k).expect("scene")
    }

    #[test]
    fn every_rendered_eval_image_is_judged_its_own_scene() {
        let (world, doc) = load();
        let images = doc["images"].as_array().expect("images");
        assert!(images.len() >= 50);
        for item in images {
            let want = key(&item["key"]);
            let got = world.judge(&pixels(item["file"].as_str().expect("file")), 64, 64);
            assert_eq!(got.scene.as_ref(), Some(&want), "{}", item["file"]);
            let a = got.agreement(&want);
            assert!(a.full && a.count && a.colors && a.kinds && a.position);
            assert_eq!(
                world.caption(&want),
                item["caption"].as_str().expect("caption")
            );
            assert_eq!(world.parse_caption(&world.caption(&want)), Some(want));
        }
    }

    /// The same pixels checked against a scene that differs in one attribute fail, and only in
    /// that attribute.
    #[test]
    fn wrong_color_shape_position_or_count_fails() {
        let (world, doc) = load();
        let item = doc["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| i["key"][0] == "single")
            .expect("a single-shape image");
        let want = key(&item["key"]);
        let j = world.judge(&pixels(item["file"].as_str().expect("file")), 64, 64);
        let Scene::Single {
            shape,
            color,
            position,
        } = want.clone()
        else {
            unreachable!()
        };
        let other = |list: Vec<&String>, not: &str| {
            list.into_iter()
                .find(|x| *x != not)
                .cloned()
                .expect("another")
        };
        let wrong_color = Scene::Single {
            shape: shape.clone(),
            color: other(world.colors.keys().collect(), &color),
            position: position.clone(),
        };
        let wrong_shape = Scene::Single {
            shape: other(world.shapes.iter().collect(), &shape),
            color: color.clone(),
            position: position.clone(),
        };
        let wrong_position = Scene::Single {
            shape: shape.clone(),
            color: color.clone(),
            position: other(world.positions.keys().collect(), &position),
        };
        let a = j.agreement(&wrong_color);
        assert!(!a.full && !a.colors && a.kinds && a.position && a.count);
        let a = j.agreement(&wrong_shape);
        assert!(!a.full && a.colors && !a.kinds && a.position && a.count);
        let a = j.agreement(&wrong_position);
        assert!(!a.full && a.colors && a.kinds && !a.position && a.count);
        let pair = Scene::Pair {
            left: (shape.clone(), color.clone()),
            right: (shape, other(world.colors.keys().collect(), &color)),
        };
        let a = j.agreement(&pair);
        assert!(!a.full && !a.count && !a.position);
    }

    /// The set covers the world's jitter (sides 18 and 22, offsets of 3 px), so the test above
    /// checks the checker on jittered renders, not only on centered 20 px shapes.
    #[test]
    fn the_eval_images_span_the_jitter() {
        let (_, doc) = load();
        let (mut sides, mut offsets) = (Vec::new(), Vec::new());
        for item in doc["images"].as_array().expect("images") {
            let key = key(&item["key"]);
            let objects = item["objects"].as_array().expect("objects");
            assert_eq!(objects.len(), key.count());
            for (i, o) in objects.iter().enumerate() {
                let (cx, cy) = (o[2].as_i64().expect("cx"), o[3].as_i64().expect("cy"));
                let (px, py) = match &key {
                    Scene::Single { position, .. } => {
                        let p = &doc["world"]["positions"][position];
                        (p["x"].as_i64().expect("x"), p["y"].as_i64().expect("y"))
                    }
                    Scene::Pair { .. } => {
                        let p = &doc["world"]["pair_centers"][i];
                        (p[0].as_i64().expect("x"), p[1].as_i64().expect("y"))
                    }
                };
                sides.push(o[4].as_i64().expect("side"));
                offsets.push((cx - px).abs().max((cy - py).abs()));
            }
        }
        assert_eq!(sides.iter().min(), Some(&18));
        assert_eq!(sides.iter().max(), Some(&22));
        assert_eq!(offsets.iter().max(), Some(&3));
    }

    /// A square drawn at `(cx, cy)` with side `side` on black, as world.py renders one.
    fn square(cx: i64, cy: i64, side: i64, rgb: [u8; 3]) -> Vec<u8> {
        let mut px = vec![0u8; 64 * 64 * 3];
        let x0 = cx - side / 2;
        let y0 = cy - side / 2;
        for y in y0.max(0)..(y0 + side).min(64) {
            for x in x0.max(0)..(x0 + side).min(64) {
                let p = (y * 64 + x) as usize * 3;
                px[p..p + 3].copy_from_slice(&rgb);
            }
        }
        px
    }

    /// Jittered to the limits (+-3 px, sides 18 and 22) a square is still at its position; moved
    /// halfway between two positions it is at none.
    #[test]
    fn jitter_keeps_the_position_and_a_halfway_shape_has_none() {
        let (world, _) = load();
        let want = |position: &str| {
            Some(Scene::Single {
                shape: "square".into(),
                color: "red".into(),
                position: position.into(),
            })
        };
        for (name, p) in &world.positions {
            for side in [18, 22] {
                for (dx, dy) in [(-3, -3), (3, 3), (-3, 3), (3, -3)] {
                    let px = square(p.x as i64 + dx, p.y as i64 + dy, side, [255, 0, 0]);
                    let j = world.judge(&px, 64, 64);
                    assert_eq!(j.scene, want(name), "{name} side {side} offset {dx},{dy}");
                }
            }
        }
        // Halfway between the left (16, 32) and the center (32, 32).
        let j = world.judge(&square(24, 32, 20, [255, 0, 0]), 64, 64);
        assert!(j.scene.is_none(), "{:?}", j.scene);
    }

    #[test]
    fn blank_noisy_and_merged_images_are_no_scene() {
        let (world, doc) = load();
        // All black: nothing.
        assert!(world.judge(&vec![0u8; 64 * 64 * 3], 64, 64).scene.is_none());
        // A valid image with a stray block of another color: three regions, no scene.
        let item = &doc["images"][0];
        let mut px = pixels(item["file"].as_str().expect("file"));
        for y in 0..8 {
            for x in 0..8 {
                let p = (y * 64 + x) * 3;
                px[p..p + 3].copy_from_slice(&[0, 255, 0]);
            }
        }
        let mut shifted = px.clone();
        let j = world.judge(&px, 64, 64);
        assert!(j.scene.is_none(), "{:?}", j.shapes);
        // A shape far too large (a 40 x 40 square) is no shape of this world.
        shifted.iter_mut().for_each(|v| *v = 0);
        for y in 12..52 {
            for x in 12..52 {
                let p = (y * 64 + x) * 3;
                shifted[p..p + 3].copy_from_slice(&[255, 0, 0]);
            }
        }
        assert!(world.judge(&shifted, 64, 64).scene.is_none());
    }
}
