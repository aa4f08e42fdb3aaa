//! Writes the scoring graph as an ONNX model, with no Python and no `protoc`: the few ONNX
//! protobuf messages it needs are declared here (field numbers from `onnx.proto3`).
//!
//! Graph, for a batch of B users over N items with D factors:
//! ```text
//! user [B, D] ── MatMul(item_factors_t [D, N]) ── Add(item_bias [N]) ── Add(mask [B, N]) ── TopK(k [1]) ── scores [B, k], indices [B, k]
//! ```
//! `mask` is 0 for candidates and -inf for filtered items (seen, deleted, unavailable, other
//! category), so filtering happens inside the graph and TopK only ranks candidates.

use prost::Message;

const FLOAT: i32 = 1;
const INT64: i32 = 7;
const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TypeTensor>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeTensor {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

enum Dim {
    Fixed(i64),
    Named(&'static str),
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Dimension {
                dim_value: Some(*v),
                dim_param: None,
            },
            Dim::Named(p) => Dimension {
                dim_value: None,
                dim_param: Some((*p).to_owned()),
            },
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        name: format!("{op}_{}", outputs[0]),
        op_type: op.to_owned(),
        attribute: attrs,
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        i,
        r#type: 2,
    }
}

fn f32_tensor(name: &str, dims: Vec<i64>, data: impl Iterator<Item = f32>) -> TensorProto {
    TensorProto {
        dims,
        data_type: FLOAT,
        name: name.to_owned(),
        raw_data: data.flat_map(f32::to_le_bytes).collect(),
    }
}

/// The scoring graph for row-major item factors `[n, dim]` and `n` item biases.
pub fn scoring_graph(
    item_factors: &[f32],
    item_bias: &[f32],
    dim: usize,
    version: &str,
) -> Vec<u8> {
    let n = item_bias.len();
    // MatMul wants [D, N]: store the factors transposed.
    let transposed = (0..dim).flat_map(|k| (0..n).map(move |i| item_factors[i * dim + k]));
    let graph = GraphProto {
        name: "streamrec_scoring".into(),
        node: vec![
            node("MatMul", &["user", "item_factors_t"], &["dot"], vec![]),
            node("Add", &["dot", "item_bias"], &["biased"], vec![]),
            node("Add", &["biased", "mask"], &["masked"], vec![]),
            node(
                "TopK",
                &["masked", "k"],
                &["scores", "indices"],
                vec![
                    int_attr("axis", -1),
                    int_attr("largest", 1),
                    int_attr("sorted", 1),
                ],
            ),
        ],
        initializer: vec![
            f32_tensor("item_factors_t", vec![dim as i64, n as i64], transposed),
            f32_tensor("item_bias", vec![n as i64], item_bias.iter().copied()),
        ],
        input: vec![
            value_info(
                "user",
                FLOAT,
                &[Dim::Named("batch"), Dim::Fixed(dim as i64)],
            ),
            value_info("mask", FLOAT, &[Dim::Named("batch"), Dim::Fixed(n as i64)]),
            value_info("k", INT64, &[Dim::Fixed(1)]),
        ],
        output: vec![
            value_info("scores", FLOAT, &[Dim::Named("batch"), Dim::Named("k")]),
            value_info("indices", INT64, &[Dim::Named("batch"), Dim::Named("k")]),
        ],
    };
    ModelProto {
        ir_version: IR_VERSION,
        producer_name: "streamrec".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![StringStringEntryProto {
            key: "model_version".into(),
            value: version.into(),
        }],
    }
    .encode_to_vec()
}
