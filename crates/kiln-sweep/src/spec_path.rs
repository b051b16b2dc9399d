//! JobSpec fields by path, through the proto descriptors: setting a trial's
//! values on the base spec, and flattening specs to `path -> value` for
//! comparison.
//!
//! Paths use proto field names (lowerCamelCase JSON names work too), `.`
//! between messages and `[i]` (or `[*]`, every element) for repeated fields:
//! `training.optimizer.learning_rate`, `model.hidden_layers[0].units`,
//! `training.optimizer.sgd.momentum` (setting a oneof member selects it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use kiln::v1 as pb;
use kiln_core::FieldError;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value as Dyn,
};
use prost_types::value::Kind as V;
use prost_types::Value;

use crate::space::field;
use crate::value_text;

fn job_spec_descriptor() -> MessageDescriptor {
    static DESCRIPTOR: OnceLock<MessageDescriptor> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            DescriptorPool::decode(kiln::FILE_DESCRIPTOR_SET)
                .expect("kiln's file descriptor set decodes")
                .get_message_by_name("kiln.v1.JobSpec")
                .expect("kiln.v1.JobSpec is in kiln's descriptor set")
        })
        .clone()
}

fn dynamic(spec: &pb::JobSpec) -> DynamicMessage {
    DynamicMessage::decode(job_spec_descriptor(), spec.encode_to_vec().as_slice())
        .expect("a JobSpec re-decodes")
}

#[derive(Debug, Clone, PartialEq)]
enum Index {
    None,
    At(usize),
    All,
}

fn parse_path(path: &str) -> Result<Vec<(String, Index)>, String> {
    path.split('.')
        .map(|segment| {
            let segment = segment.trim();
            let (name, index) = match segment.find('[') {
                None => (segment, Index::None),
                Some(open) => {
                    let inner = segment[open + 1..]
                        .strip_suffix(']')
                        .ok_or_else(|| format!("\"{segment}\": an index is written [i] or [*]"))?;
                    let index = if inner == "*" {
                        Index::All
                    } else {
                        Index::At(inner.parse().map_err(|_| {
                            format!("\"{segment}\": an index is written [i] or [*]")
                        })?)
                    };
                    (&segment[..open], index)
                }
            };
            if name.is_empty() {
                return Err(format!("\"{path}\" has an empty field name"));
            }
            Ok((name.to_string(), index))
        })
        .collect()
}

/// Sets one field of `msg` by path.
fn set_path(
    msg: &mut DynamicMessage,
    path: &[(String, Index)],
    value: &Value,
) -> Result<(), String> {
    let (name, index) = &path[0];
    let rest = &path[1..];
    let descriptor = msg.descriptor();
    let field = descriptor
        .get_field_by_name(name)
        .or_else(|| descriptor.get_field_by_json_name(name))
        .ok_or_else(|| {
            let names: Vec<String> = descriptor.fields().map(|f| f.name().to_string()).collect();
            format!(
                "{} has no field \"{name}\"; its fields: {}",
                descriptor.full_name(),
                names.join(", ")
            )
        })?;
    if field.is_map() {
        return Err(format!("\"{name}\" is a map; maps cannot be searched"));
    }
    match (index, field.is_list()) {
        (Index::None, true) => Err(format!(
            "\"{name}\" is a repeated field: name an element, {name}[0], or every one, {name}[*]"
        )),
        (Index::At(_) | Index::All, false) => Err(format!("\"{name}\" is not a repeated field")),
        (Index::None, false) => {
            if rest.is_empty() {
                let converted =
                    convert(&field.kind(), value).map_err(|m| format!("{name}: {m}"))?;
                msg.try_set_field(&field, converted)
                    .map_err(|e| format!("{name}: {e}"))
            } else {
                match field.kind() {
                    Kind::Message(_) => {
                        let child = msg
                            .get_field_mut(&field)
                            .as_message_mut()
                            .expect("a message field holds a message");
                        set_path(child, rest, value)
                    }
                    _ => Err(format!(
                        "\"{name}\" is not a message: it has no field \"{}\"",
                        rest[0].0
                    )),
                }
            }
        }
        (Index::At(_) | Index::All, true) => {
            let kind = field.kind();
            let list = msg
                .get_field_mut(&field)
                .as_list_mut()
                .expect("a repeated field holds a list");
            let indices: Vec<usize> = match index {
                Index::At(i) if *i < list.len() => vec![*i],
                Index::At(i) => {
                    return Err(format!(
                        "{name}[{i}]: out of range, the base spec has {} element(s)",
                        list.len()
                    ))
                }
                _ if list.is_empty() => {
                    return Err(format!("{name}[*]: the base spec has no elements"))
                }
                _ => (0..list.len()).collect(),
            };
            for i in indices {
                if rest.is_empty() {
                    list[i] = convert(&kind, value).map_err(|m| format!("{name}[{i}]: {m}"))?;
                } else {
                    let child = list[i].as_message_mut().ok_or_else(|| {
                        format!(
                            "{name}[{i}] is not a message: it has no field \"{}\"",
                            rest[0].0
                        )
                    })?;
                    set_path(child, rest, value)?;
                }
            }
            Ok(())
        }
    }
}

fn integral(x: f64, low: f64, high: f64) -> Result<f64, String> {
    if x.fract() != 0.0 || x < low || x > high {
        Err(format!(
            "{} is not an integer in [{low}, {high}]",
            value_text(&crate::space::number(x))
        ))
    } else {
        Ok(x)
    }
}

/// A search value as the field's kind.
fn convert(kind: &Kind, value: &Value) -> Result<Dyn, String> {
    let number = match &value.kind {
        Some(V::NumberValue(x)) => Some(*x),
        Some(V::StringValue(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let wrong = |expected: &str| format!("expected {expected}, got {}", value_text(value));
    Ok(match kind {
        Kind::Double => Dyn::F64(number.ok_or_else(|| wrong("a number"))?),
        Kind::Float => Dyn::F32(number.ok_or_else(|| wrong("a number"))? as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Dyn::I32(integral(
            number.ok_or_else(|| wrong("an integer"))?,
            i32::MIN as f64,
            i32::MAX as f64,
        )? as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Dyn::I64(integral(
            number.ok_or_else(|| wrong("an integer"))?,
            -9.007_199_254_740_992e15,
            9.007_199_254_740_992e15,
        )? as i64),
        Kind::Uint32 | Kind::Fixed32 => Dyn::U32(integral(
            number.ok_or_else(|| wrong("an integer"))?,
            0.0,
            u32::MAX as f64,
        )? as u32),
        Kind::Uint64 | Kind::Fixed64 => Dyn::U64(integral(
            number.ok_or_else(|| wrong("an integer"))?,
            0.0,
            9.007_199_254_740_992e15,
        )? as u64),
        Kind::Bool => match &value.kind {
            Some(V::BoolValue(b)) => Dyn::Bool(*b),
            _ => return Err(wrong("true or false")),
        },
        Kind::String => match &value.kind {
            Some(V::StringValue(s)) => Dyn::String(s.clone()),
            _ => return Err(wrong("a string")),
        },
        Kind::Bytes => return Err("bytes fields cannot be searched".into()),
        Kind::Enum(e) => {
            let found = match &value.kind {
                // The full name, or its tail after the type's prefix
                // ("TANH" for ACTIVATION_TANH) when only one value ends so.
                Some(V::StringValue(s)) => e.get_value_by_name(s.trim()).or_else(|| {
                    let tail = format!("_{}", s.trim().to_ascii_uppercase());
                    let mut matching = e.values().filter(|v| v.name().ends_with(&tail));
                    match (matching.next(), matching.next()) {
                        (Some(v), None) => Some(v),
                        _ => None,
                    }
                }),
                Some(V::NumberValue(x)) if x.fract() == 0.0 => e.get_value(*x as i32),
                _ => None,
            };
            match found {
                Some(v) => Dyn::EnumNumber(v.number()),
                None => {
                    let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                    return Err(format!(
                        "{} is not a value of {}; one of {}",
                        value_text(value),
                        e.full_name(),
                        names.join(", ")
                    ));
                }
            }
        }
        Kind::Message(m) => {
            return Err(format!(
                "is a message ({}): name one of its fields",
                m.full_name()
            ))
        }
    })
}

/// `base` with each `(path, value)` set. A bad path or value is an error
/// naming `search_space["<path>"]`.
pub fn apply(base: &pb::JobSpec, params: &[(String, Value)]) -> Result<pb::JobSpec, FieldError> {
    let mut msg = dynamic(base);
    for (path, value) in params {
        let parsed = parse_path(path).map_err(|m| FieldError::new(field(path), m))?;
        set_path(&mut msg, &parsed, value).map_err(|m| FieldError::new(field(path), m))?;
    }
    msg.transcode_to::<pb::JobSpec>()
        .map_err(|e| FieldError::new("search_space", format!("cannot build the trial spec: {e}")))
}

/// The parameter a validation error is about: the one whose path (indices
/// dropped) is a prefix of the error's field, or the other way round.
fn blame<'a>(params: &'a [(String, Value)], error_field: &str) -> Option<&'a (String, Value)> {
    let plain = |p: &str| -> String {
        let mut out = String::new();
        let mut depth = 0;
        for c in p.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    };
    let error_field = plain(error_field.strip_prefix("spec.").unwrap_or(error_field));
    params.iter().find(|(path, _)| {
        let path = plain(path);
        error_field.starts_with(&path) || path.starts_with(&error_field)
    })
}

/// Trial `number`'s spec: `base` with `params` set, model name
/// `<model_name>-trial-<number>`, labels `sweep=<sweep_id>` and
/// `trial=<number>`, validated. Errors name `search_space["<path>"]`.
pub fn trial_spec(
    base: &pb::JobSpec,
    params: &[(String, Value)],
    number: u32,
    sweep_id: &str,
    model_name: &str,
) -> Result<(pb::JobSpec, kiln_core::spec::JobSpec), FieldError> {
    let mut spec = apply(base, params)?;
    spec.model_name = format!("{model_name}-trial-{number}");
    spec.labels.insert("sweep".into(), sweep_id.into());
    spec.labels.insert("trial".into(), number.to_string());
    let validated = kiln_core::spec::JobSpec::from_proto(&spec).map_err(|e| {
        let values: Vec<String> = params
            .iter()
            .map(|(p, v)| format!("{p}={}", value_text(v)))
            .collect();
        match blame(params, &e.field) {
            Some((path, value)) => FieldError::new(
                field(path),
                format!("value {} makes an invalid spec: {e}", value_text(value)),
            ),
            None => FieldError::new(
                "search_space",
                format!(
                    "trial {number} ({}) makes an invalid spec: {e}",
                    values.join(", ")
                ),
            ),
        }
    })?;
    Ok((spec, validated))
}

/// A spec as `path -> proto JSON value`, unset fields left out. Inline data
/// stays one value at `data.inline`.
pub fn flatten_spec(spec: &pb::JobSpec) -> BTreeMap<String, serde_json::Value> {
    let options = SerializeOptions::new().use_proto_field_name(true);
    let json = dynamic(spec)
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a JobSpec serializes to JSON");
    let mut out = BTreeMap::new();
    flatten("", &json, &mut out);
    out
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) if prefix != "data.inline" => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// How a flattened value is shown: proto JSON, inline data summarized.
fn shown(path: &str, value: Option<&serde_json::Value>) -> String {
    match value {
        None => String::new(),
        Some(v) if path == "data.inline" => {
            let rows = v.get("rows").and_then(|r| r.as_array()).map_or(0, Vec::len);
            let text = v.to_string();
            // FNV-1a, so two different tables of the same size read differently.
            let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            format!("<inline data: {rows} rows, #{:08x}>", hash as u32)
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The fields whose values differ between `specs`, sorted by path: each with
/// one value per spec ("" where unset).
pub fn diff_specs(specs: &[pb::JobSpec]) -> Vec<(String, Vec<String>)> {
    let flat: Vec<_> = specs.iter().map(flatten_spec).collect();
    let paths: BTreeSet<&String> = flat.iter().flat_map(|f| f.keys()).collect();
    paths
        .into_iter()
        .filter(|path| {
            let first = flat[0].get(*path);
            flat.iter().any(|f| f.get(*path) != first)
        })
        .map(|path| {
            (
                path.clone(),
                flat.iter().map(|f| shown(path, f.get(path))).collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::number;
    use crate::testing;

    fn text(s: &str) -> Value {
        Value {
            kind: Some(V::StringValue(s.into())),
        }
    }

    /// The shared test spec with two hidden layers.
    fn base() -> pb::JobSpec {
        pb::JobSpec {
            model: Some(pb::ModelSpec {
                hidden_layers: vec![
                    pb::HiddenLayer {
                        units: 8,
                        ..Default::default()
                    },
                    pb::HiddenLayer {
                        units: 4,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..testing::base()
        }
    }

    fn set(path: &str, value: Value) -> Result<pb::JobSpec, FieldError> {
        apply(&base(), &[(path.to_string(), value)])
    }

    #[test]
    fn sets_nested_fields_creating_messages() {
        let spec = set("training.optimizer.learning_rate", number(0.05)).unwrap();
        assert_eq!(
            spec.training.unwrap().optimizer.unwrap().learning_rate,
            Some(0.05)
        );
        let spec = set("training.batch_size", number(16.0)).unwrap();
        assert_eq!(spec.training.unwrap().batch_size, 16);
        // JSON names work too.
        let spec = set("training.batchSize", text("8")).unwrap();
        assert_eq!(spec.training.unwrap().batch_size, 8);
    }

    #[test]
    fn sets_repeated_elements_and_enums() {
        let spec = set("model.hidden_layers[1].units", number(32.0)).unwrap();
        let layers = spec.model.unwrap().hidden_layers;
        assert_eq!((layers[0].units, layers[1].units), (8, 32));
        let spec = set("model.hidden_layers[*].activation", text("TANH")).unwrap();
        let layers = spec.model.unwrap().hidden_layers;
        assert!(layers
            .iter()
            .all(|l| l.activation() == pb::Activation::Tanh));
        let spec = set("task", number(pb::Task::BinaryClassification as i32 as f64)).unwrap();
        assert_eq!(spec.task(), pb::Task::BinaryClassification);
    }

    #[test]
    fn bad_paths_and_values_name_the_parameter() {
        let field_of = |path: &str, v: Value| set(path, v).unwrap_err();
        let e = field_of("training.optimizer.learnign_rate", number(0.1));
        assert_eq!(
            e.field,
            "search_space[\"training.optimizer.learnign_rate\"]"
        );
        assert!(e.message.contains("learning_rate"), "lists the fields: {e}");
        let e = field_of("training.batch_size", number(2.5));
        assert!(e.message.contains("integer"), "{e}");
        let e = field_of("training.batch_size", number(-1.0));
        assert!(e.message.contains("integer"), "{e}");
        let e = field_of("model.hidden_layers[5].units", number(3.0));
        assert!(e.message.contains("out of range"), "{e}");
        let e = field_of("model.hidden_layers.units", number(3.0));
        assert!(e.message.contains("repeated"), "{e}");
        let e = field_of("model.hidden_layers[0].activation", text("SWISH"));
        assert!(e.message.contains("RELU"), "lists the values: {e}");
        let e = field_of("training", number(1.0));
        assert!(e.message.contains("message"), "{e}");
        let e = field_of("training.epochs.x", number(1.0));
        assert!(e.message.contains("not a message"), "{e}");
        let e = field_of("labels", text("x"));
        assert!(e.message.contains("map"), "{e}");
    }

    #[test]
    fn trial_specs_are_labelled_named_and_validated() {
        let params = vec![("training.optimizer.learning_rate".to_string(), number(0.01))];
        let (spec, validated) = trial_spec(&base(), &params, 3, "sw-1", "house").unwrap();
        assert_eq!(spec.model_name, "house-trial-3");
        assert_eq!(spec.labels["sweep"], "sw-1");
        assert_eq!(spec.labels["trial"], "3");
        assert_eq!(validated.training.optimizer.learning_rate, 0.01);

        let params = vec![("training.optimizer.learning_rate".to_string(), number(-1.0))];
        let e = trial_spec(&base(), &params, 1, "sw", "m").unwrap_err();
        assert_eq!(
            e.field,
            "search_space[\"training.optimizer.learning_rate\"]"
        );
        assert!(
            e.message.contains("spec.training.optimizer.learning_rate"),
            "{e}"
        );
        let params = vec![("model.hidden_layers[0].units".to_string(), number(0.0))];
        let e = trial_spec(&base(), &params, 1, "sw", "m").unwrap_err();
        assert_eq!(
            e.field, "search_space[\"model.hidden_layers[0].units\"]",
            "{e}"
        );
    }

    #[test]
    fn diffs_show_only_what_differs() {
        let a = set("training.optimizer.learning_rate", number(0.1)).unwrap();
        let mut b = set("model.hidden_layers[0].units", number(16.0)).unwrap();
        b.labels.insert("trial".into(), "2".into());
        let diff = diff_specs(&[a.clone(), b]);
        let paths: Vec<&str> = diff.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "labels.trial",
                "model.hidden_layers[0].units",
                "training.optimizer.learning_rate"
            ]
        );
        assert_eq!(diff[1].1, ["8", "16"]);
        assert_eq!(diff[2].1, ["0.1", ""]);
        assert!(diff_specs(&[a.clone(), a.clone()]).is_empty());
        let flat = flatten_spec(&a);
        assert!(flat.contains_key("data.inline"));
        assert_eq!(flat["task"], serde_json::json!("TASK_REGRESSION"));
        let mut c = a.clone();
        if let Some(pb::data_spec::Source::Inline(inline)) =
            c.data.as_mut().and_then(|d| d.source.as_mut())
        {
            inline.rows[0].values[1] = 99.0;
        }
        let diff = diff_specs(&[a, c]);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].0, "data.inline");
        assert!(
            diff[0].1[0].starts_with("<inline data: 20 rows"),
            "{:?}",
            diff[0].1
        );
        assert_ne!(diff[0].1[0], diff[0].1[1]);
    }
}
