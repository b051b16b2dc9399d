//! Open Inference Protocol requests as Triton's and KServe's clients send
//! them: one FP32 tensor `input` of shape [rows, width], its values raw
//! (`raw_input_contents`, little-endian) or typed (`fp32_contents`).

use kiln::inference as oip;

/// How a request carries its tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Encoding {
    Raw,
    Typed,
}

/// A ModelInfer request for `model` with `rows` (row-major, `width` each).
pub fn request(
    model: &str,
    rows: &[f32],
    width: usize,
    encoding: Encoding,
) -> oip::ModelInferRequest {
    let mut input = oip::model_infer_request::InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape: vec![(rows.len() / width) as i64, width as i64],
        ..Default::default()
    };
    let mut raw = Vec::new();
    match encoding {
        Encoding::Raw => raw.push(rows.iter().flat_map(|v| v.to_le_bytes()).collect()),
        Encoding::Typed => {
            input.contents = Some(oip::InferTensorContents {
                fp32_contents: rows.to_vec(),
                ..Default::default()
            })
        }
    }
    oip::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input],
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// The `probabilities` output's values, raw or typed.
pub fn probabilities(response: &oip::ModelInferResponse) -> Result<Vec<f32>, String> {
    let index = response
        .outputs
        .iter()
        .position(|o| o.name == "probabilities")
        .ok_or_else(|| format!("no probabilities output in {:?}", response.outputs))?;
    if let Some(raw) = response.raw_output_contents.get(index) {
        return Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    response.outputs[index]
        .contents
        .as_ref()
        .map(|c| c.fp32_contents.clone())
        .ok_or_else(|| "probabilities without contents".into())
}
