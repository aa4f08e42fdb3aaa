//! Writes the scoring graph as an ONNX model, with no Python and no `protoc`: the few ONNX
//! protobuf messages it needs are declared here (field numbers from `onnx.proto3`).
//!
//! The hybrid graph, for one user over N items with D factors, at most K successors and at
//! most J item-to-item neighbours per item:
//! ```text
//! user [1, D] ── MatMul(item_factors_t [D, N]) ── standardise ───────────────────────────┐ cf
//! items [M], item_weight [M] ── Gather(neighbour_rows [N, J]),                           │
//!   Gather(neighbour_weights [N, J]) × weight ── ScatterElements(add) [N] ── standardise ─┤ item-item
//! history [H], history_weight [H] ── Gather(successor_rows [N, K]),                      │
//!   Gather(successor_weights [N, K]) × weight ── ScatterElements(add) [N] ── standardise ─┤ transitions
//!   Concat [3, N] ── MatMul(blend [1, 3]) ── Add(item_bias [N]) ── Add(mask [1, N]) ───────┘
//!   ── TopK(k [1]) ── scores [1, k], indices [1, k]
//! ```
//! Collaborative filtering scores what the user likes overall, the item-to-item table what goes
//! with everything they liked (their whole history, each item weight 1), the transition table
//! what tends to come next after their recent items (recency weights); each is standardised
//! (mean 0, sd 1 over all items) so that the request's `blend` weights mix them. `mask` is 0 for
//! candidates and -inf for filtered items (seen, deleted, unavailable, other category), so
//! filtering happens inside the graph and TopK only ranks candidates. The graph computes exactly
//! what [`crate::blend::combine`] computes in Rust from [`crate::als`],
//! [`crate::item_item::ItemItem::score`] and [`crate::transitions::Transitions::score`].

use prost::Message;

const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;
const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;
/// Added to a standard deviation before dividing by it; the Rust side uses the same.
pub const STD_EPSILON: f32 = 1e-6;

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
    #[prost(bytes = "vec", tag = "4")]
    s: Vec<u8>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
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
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        ints: ints.to_vec(),
        r#type: 7,
        ..Default::default()
    }
}

fn string_attr(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        s: s.as_bytes().to_vec(),
        r#type: 3,
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: Vec<i64>, data: &[i64]) -> TensorProto {
    TensorProto {
        dims,
        data_type: INT64,
        name: name.to_owned(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn i32_tensor(name: &str, dims: Vec<i64>, data: impl Iterator<Item = i32>) -> TensorProto {
    TensorProto {
        dims,
        data_type: INT32,
        name: name.to_owned(),
        raw_data: data.flat_map(i32::to_le_bytes).collect(),
    }
}

/// Nodes that standardise `input` [1, N] over its last axis into `{input}_z`.
fn standardize_nodes(input: &str) -> Vec<NodeProto> {
    let n = |suffix: &str| format!("{input}_{suffix}");
    let (mean, centered, square, var, sd, sd_eps, z) = (
        n("mean"),
        n("centered"),
        n("square"),
        n("var"),
        n("sd"),
        n("sd_eps"),
        n("z"),
    );
    vec![
        node(
            "ReduceMean",
            &[input],
            &[&mean],
            vec![ints_attr("axes", &[-1]), int_attr("keepdims", 1)],
        ),
        node("Sub", &[input, &mean], &[&centered], vec![]),
        node("Mul", &[&centered, &centered], &[&square], vec![]),
        node(
            "ReduceMean",
            &[&square],
            &[&var],
            vec![ints_attr("axes", &[-1]), int_attr("keepdims", 1)],
        ),
        node("Sqrt", &[&var], &[&sd], vec![]),
        node("Add", &[&sd, "epsilon"], &[&sd_eps], vec![]),
        node("Div", &[&centered, &sd_eps], &[&z], vec![]),
    ]
}

fn f32_tensor(name: &str, dims: Vec<i64>, data: impl Iterator<Item = f32>) -> TensorProto {
    TensorProto {
        dims,
        data_type: FLOAT,
        name: name.to_owned(),
        raw_data: data.flat_map(f32::to_le_bytes).collect(),
    }
}

/// Nodes that score a neighbour table from a weighted list of item rows: `{part}` [1, N] is,
/// for every item, the sum over the list of `weight × table weight` towards it.
fn neighbour_nodes(part: &str, table: &str, index: &str, weight: &str) -> Vec<NodeProto> {
    let n = |suffix: &str| format!("{part}_{suffix}");
    let (rows, weights, col, weighted, rows_flat, weighted_flat, sum) = (
        n("rows"),
        n("weights"),
        n("weight_col"),
        n("weighted"),
        n("rows_flat"),
        n("weighted_flat"),
        n("sum"),
    );
    let (table_rows, table_weights) = (format!("{table}_rows"), format!("{table}_weights"));
    vec![
        node(
            "Gather",
            &[&table_rows, index],
            &[&rows],
            vec![int_attr("axis", 0)],
        ),
        node(
            "Gather",
            &[&table_weights, index],
            &[&weights],
            vec![int_attr("axis", 0)],
        ),
        node("Unsqueeze", &[weight, "axis_1"], &[&col], vec![]),
        node("Mul", &[&weights, &col], &[&weighted], vec![]),
        node("Reshape", &[&rows, "flat"], &[&rows_flat], vec![]),
        node("Reshape", &[&weighted, "flat"], &[&weighted_flat], vec![]),
        node(
            "ScatterElements",
            &["zeros", &rows_flat, &weighted_flat],
            &[&sum],
            vec![int_attr("axis", 0), string_attr("reduction", "add")],
        ),
        node("Unsqueeze", &[&sum, "axis_0"], &[part], vec![]),
    ]
}

/// A neighbour table as dense `[n, k]` initializers `{name}_rows` and `{name}_weights`, padded
/// with row 0 at weight 0 (k at least 1).
fn table_tensors(name: &str, table: &[Vec<(u32, f32)>], n: usize) -> [TensorProto; 2] {
    let k = table.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let padded = |i: usize, j: usize| table.get(i).and_then(|row| row.get(j)).copied();
    let rows = (0..n).flat_map(|i| (0..k).map(move |j| padded(i, j).map_or(0, |(r, _)| r as i32)));
    let weights = (0..n).flat_map(|i| (0..k).map(move |j| padded(i, j).map_or(0.0, |(_, w)| w)));
    [
        i32_tensor(&format!("{name}_rows"), vec![n as i64, k as i64], rows),
        f32_tensor(
            &format!("{name}_weights"),
            vec![n as i64, k as i64],
            weights,
        ),
    ]
}

/// The hybrid scoring graph for row-major item factors `[n, dim]`, `n` item biases, each item's
/// transition successors and its item-to-item neighbours, `(row, weight)` each.
pub fn scoring_graph(
    item_factors: &[f32],
    item_bias: &[f32],
    dim: usize,
    successors: &[Vec<(u32, f32)>],
    neighbours: &[Vec<(u32, f32)>],
    version: &str,
) -> Vec<u8> {
    let n = item_bias.len();
    // MatMul wants [D, N]: store the factors transposed.
    let transposed = (0..dim).flat_map(|k| (0..n).map(move |i| item_factors[i * dim + k]));
    let mut nodes = vec![node("MatMul", &["user", "item_factors_t"], &["cf"], vec![])];
    nodes.extend(neighbour_nodes(
        "together",
        "neighbour",
        "items",
        "item_weight",
    ));
    nodes.extend(neighbour_nodes(
        "next",
        "successor",
        "history",
        "history_weight",
    ));
    nodes.extend(standardize_nodes("cf"));
    nodes.extend(standardize_nodes("together"));
    nodes.extend(standardize_nodes("next"));
    nodes.extend([
        node(
            "Concat",
            &["cf_z", "together_z", "next_z"],
            &["parts"],
            vec![int_attr("axis", 0)],
        ),
        node("Unsqueeze", &["blend", "axis_0"], &["blend_row"], vec![]),
        node("MatMul", &["blend_row", "parts"], &["blended"], vec![]),
        node("Add", &["blended", "item_bias"], &["biased"], vec![]),
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
    ]);
    let mut initializer = vec![
        f32_tensor("item_factors_t", vec![dim as i64, n as i64], transposed),
        f32_tensor("item_bias", vec![n as i64], item_bias.iter().copied()),
        f32_tensor("zeros", vec![n as i64], std::iter::repeat_n(0.0, n)),
        f32_tensor("epsilon", vec![1], [STD_EPSILON].into_iter()),
        i64_tensor("axis_0", vec![1], &[0]),
        i64_tensor("axis_1", vec![1], &[1]),
        i64_tensor("flat", vec![1], &[-1]),
    ];
    initializer.extend(table_tensors("successor", successors, n));
    initializer.extend(table_tensors("neighbour", neighbours, n));
    let graph = GraphProto {
        name: "streamrec_scoring".into(),
        node: nodes,
        initializer,
        input: vec![
            value_info("user", FLOAT, &[Dim::Fixed(1), Dim::Fixed(dim as i64)]),
            value_info("items", INT64, &[Dim::Named("items")]),
            value_info("item_weight", FLOAT, &[Dim::Named("items")]),
            value_info("history", INT64, &[Dim::Named("history")]),
            value_info("history_weight", FLOAT, &[Dim::Named("history")]),
            value_info("blend", FLOAT, &[Dim::Fixed(3)]),
            value_info("mask", FLOAT, &[Dim::Fixed(1), Dim::Fixed(n as i64)]),
            value_info("k", INT64, &[Dim::Fixed(1)]),
        ],
        output: vec![
            value_info("scores", FLOAT, &[Dim::Fixed(1), Dim::Named("k")]),
            value_info("indices", INT64, &[Dim::Fixed(1), Dim::Named("k")]),
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
