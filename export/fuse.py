"""ONNX Runtime graph variant: unmasked attention fused into ``com.microsoft.MultiHeadAttention``, and the
tanh-approximated GELU into ``com.microsoft.FastGelu``.

The bundle's ``<segment>.onnx`` stays standard ONNX (it is what TensorRT builds from). For ONNX Runtime
the export also writes ``<segment>.ort.onnx``: the same graph, sharing the same external weight file, in
which each unmasked scaled-dot-product attention that the legacy exporter spells out as

    Reshape -> Transpose -> Mul(scale)  (q, k, v)
    MatMul(q, k^T) -> Softmax -> MatMul(., v) -> Transpose -> Reshape

is one ``MultiHeadAttention`` node (ONNX Runtime contrib op; its CPU kernel computes softmax(q k^T) v
tile by tile instead of materialising the whole score tensor through separate ops). Attention with an
additive mask (PixArt's cross-attention to the caption) is left as it is: the contrib op wants that
bias expanded to [batch, heads, queries, keys], and with the expansion it measured slower than the
unfused graph on this CPU (benchmarks/int8_groups.py prints both variants).

The tanh GELU of the feed-forwards (``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))``, spelled out by
the exporter as eight Mul / Add / Tanh nodes over the widest activation of the block) becomes one
``FastGelu`` node: one pass over that tensor instead of eight. ONNX Runtime's own FastGelu fusion does
not match the exporter's operand order. On INT8 PixArt-α groups (2 threads, AVX2 EPYC) it saved 3–10 %
per call, on FP32 about 4 % (benchmarks/group_time.py --fusion; README, Fused attention).

The fused graph is checked against PyTorch at the export's tolerance like every other graph.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

MS_DOMAIN = "com.microsoft"


def fuse_for_ort(src: Path, dst: Path, gelu: bool = True) -> dict[str, int]:
    """Write ``dst``: ``src`` with its unmasked attention and (unless ``gelu`` is False) its tanh GELUs
    fused. Returns how many of each were fused ({"fused_attention": n, "fused_gelu": m}); when none are,
    nothing is written. ``dst`` must be in ``src``'s folder (it reuses ``src``'s external data)."""
    import onnx

    src, dst = Path(src), Path(dst)
    if src.parent.resolve() != dst.parent.resolve():
        raise ValueError(f"{dst} | must be next to {src}: the fused graph refers to the same external weight file")
    model = onnx.load(str(src), load_external_data=False)
    fused = {"fused_attention": _fuse(model), "fused_gelu": _fuse_gelu(model) if gelu else 0}
    if any(fused.values()):
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
        tmp = dst.with_name(dst.name + ".tmp")
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))  # by path: external data resolves next to it
        tmp.replace(dst)
    return fused


def _index(graph):
    """(producer of each name, consumers of each name, constant tensors by name: initializers and
    Constant nodes' values, None where a Constant has no plain value)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    consts = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = next((a.t for a in n.attribute if a.name == "value"), None)
    return producer, consumers, consts


def _fuse(model) -> int:
    from onnx import helper, numpy_helper

    graph = model.graph
    producer, consumers, consts = _index(graph)
    shapes = _shapes(model)

    def only_consumer(name: str, op: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def perm(node) -> list[int] | None:
        return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)

    def split_heads(name: str, want_perm: list[int]):
        """name = [Mul(.., s)] of Transpose(want_perm) of Reshape(x3) -> (x3, scale or None, transposed name)."""
        node, scale = producer.get(name), 1.0
        if node is not None and node.op_type == "Mul":
            const = [i for i in node.input if i in consts and consts[i] is not None]
            if len(const) == 1:
                scale = float(numpy_helper.to_array(consts[const[0]]).reshape(-1)[0])
                other = [i for i in node.input if i != const[0]][0]
            else:
                scale = None  # computed in the graph (from the head size): SDPA's default scale
                other = node.input[0]
            node = producer.get(other)
        if node is None or node.op_type != "Transpose" or perm(node) != want_perm:
            return None
        reshape = producer.get(node.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            return None
        return reshape.input[0], scale, node.output[0]

    new_nodes, count = [], 0
    for sm in [n for n in graph.node if n.op_type == "Softmax"]:
        axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
        scores = producer.get(sm.input[0])
        if axis not in (-1, 3) or scores is None or scores.op_type != "MatMul":  # masked (Add) or other: keep
            continue
        q = split_heads(scores.input[0], [0, 2, 1, 3])
        k = split_heads(scores.input[1], [0, 2, 3, 1])
        ctx = only_consumer(sm.output[0], "MatMul")
        if q is None or k is None or ctx is None or ctx.input[0] != sm.output[0]:
            continue
        v = split_heads(ctx.input[1], [0, 2, 1, 3])
        merge_t = only_consumer(ctx.output[0], "Transpose")
        if v is None or v[1] != 1.0 or merge_t is None or perm(merge_t) != [0, 2, 1, 3]:
            continue
        merge_r = only_consumer(merge_t.output[0], "Reshape")
        heads = _heads(producer[producer[q[2]].input[0]], producer, consts, shapes, q[2])
        if merge_r is None or not heads:
            continue
        attrs = {"num_heads": heads}
        if q[1] is not None and k[1] is not None:  # explicit constants: keep their product
            attrs["scale"] = q[1] * k[1]
        elif (q[1] is None) != (k[1] is None):
            continue  # one side computed, the other constant: not SDPA's pattern
        mha = helper.make_node("MultiHeadAttention", [q[0], k[0], v[0]], [merge_r.output[0]],
                               name=f"{sm.name or 'attention'}/FusedMHA", domain=MS_DOMAIN, **attrs)
        new_nodes.append((merge_r, mha))
        count += 1
    _swap(graph, new_nodes)
    return count


SQRT_2_OVER_PI = 0.7978845608028654  # the tanh GELU's constants
GELU_CUBIC = 0.044715


def _fuse_gelu(model) -> int:
    """Replace each tanh GELU of some x, ``0.5 x (1 + tanh(SQRT_2_OVER_PI (x + GELU_CUBIC x^3)))`` with the
    factors in any order, by ``FastGelu(x)``. Every intermediate must have no other user (else its nodes
    would stay for that user and nothing would be saved). Returns how many were fused."""
    from onnx import helper

    match, swaps = _GeluMatcher(model.graph), []
    for tanh in [n for n in model.graph.node if n.op_type == "Tanh"]:
        x = match.gelu_input(tanh)
        last = match.gelu_output(tanh, x) if x else None
        if last is not None:
            swaps.append((last, helper.make_node("FastGelu", [x], [last.output[0]], name=f"{tanh.name or 'gelu'}/FastGelu",
                                                 domain=MS_DOMAIN)))
    _swap(model.graph, swaps)
    return len(swaps)


class _GeluMatcher:
    """The tanh GELU's two halves around its Tanh node, matched on one graph's index."""

    def __init__(self, graph):
        self.producer, self.consumers, self.consts = _index(graph)
        self.graph_outputs = {o.name for o in graph.output}

    def scalar(self, name: str) -> float | None:
        from onnx import numpy_helper

        t = self.consts.get(name)
        value = None if t is None else numpy_helper.to_array(t)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def near(self, name: str, want: float) -> bool:
        value = self.scalar(name)
        return value is not None and abs(value - want) <= 1e-5 * abs(want)

    def sole(self, name: str, op: str | None = None):
        """The one node using name (of type op), or None (also when name is a graph output)."""
        users = self.consumers.get(name, [])
        if name in self.graph_outputs or len(users) != 1:
            return None
        return users[0] if op is None or users[0].op_type == op else None

    def by_constant(self, node, op: str, want: float) -> str | None:
        """node is op(c, y) or op(y, c) with the scalar constant c == want: y, else None."""
        if node is None or node.op_type != op or len(node.input) != 2:
            return None
        a, b = node.input
        for c, y in ((a, b), (b, a)):
            if self.near(c, want) and self.scalar(y) is None:
                return y
        return None

    def is_cube(self, name: str, x: str) -> bool:
        """name is Pow(x, 3), or x * (x * x) in either order, each product used once."""
        node = self.producer.get(name)
        if node is None or self.sole(name) is None:
            return False
        if node.op_type == "Pow":
            return node.input[0] == x and self.near(node.input[1], 3.0)
        if node.op_type != "Mul" or x not in node.input:
            return False
        square = self.producer.get(node.input[1] if node.input[0] == x else node.input[0])
        return square is not None and square.op_type == "Mul" and list(square.input) == [x, x] \
            and self.sole(square.output[0]) is not None

    def gelu_input(self, tanh) -> str | None:
        """x when tanh's input is SQRT_2_OVER_PI * (x + GELU_CUBIC * x^3), each step used once."""
        inner = self.by_constant(self.producer.get(tanh.input[0]), "Mul", SQRT_2_OVER_PI)
        add = self.producer.get(inner) if inner and self.sole(tanh.input[0]) and self.sole(inner) else None
        if add is None or add.op_type != "Add":
            return None
        a, b = add.input
        for x, cubic in ((a, b), (b, a)):
            cube = self.by_constant(self.producer.get(cubic), "Mul", GELU_CUBIC)
            if cube and self.sole(cubic) and self.is_cube(cube, x):
                return x
        return None

    def gelu_output(self, tanh, x: str):
        """The node whose output is 0.5 * x * (1 + tanh(..)): Mul(Mul(1 + t, x), 0.5) or Mul(1 + t, 0.5 * x)."""
        one_plus = self.sole(tanh.output[0], "Add")
        if one_plus is None or self.by_constant(one_plus, "Add", 1.0) != tanh.output[0]:
            return None
        times = self.sole(one_plus.output[0], "Mul")
        if times is None or len(times.input) != 2:
            return None
        other = times.input[1] if times.input[0] == one_plus.output[0] else times.input[0]
        if other == x:
            half = self.sole(times.output[0], "Mul")
            return half if self.by_constant(half, "Mul", 0.5) == times.output[0] else None
        return times if self.sole(other) and self.by_constant(self.producer.get(other), "Mul", 0.5) == x else None


def _swap(graph, swaps: list) -> None:
    """Put each (old, new) pair's new node where old was (new writes old's output), then drop what the
    replaced subgraphs leave unused."""
    for old, new in swaps:
        index = list(graph.node).index(old)
        graph.node.remove(old)
        graph.node.insert(index, new)
    if swaps:
        _prune(graph)


def _heads(reshape, producer, consts, shapes, transposed: str) -> int | None:
    """The head count of a [batch, seq, heads * dim] -> [batch, seq, heads, dim] Reshape: from shape inference
    when it resolved the split shape, else from the Reshape's target (a constant, or a Concat whose third
    element is one, as the legacy exporter writes ``view(batch, -1, heads, head_dim)``)."""
    from onnx import numpy_helper

    shape = shapes.get(transposed)  # [batch, heads, seq, dim]
    if shape and len(shape) == 4 and isinstance(shape[1], int):
        return shape[1]
    target = reshape.input[1]
    if target in consts and consts[target] is not None:
        values = numpy_helper.to_array(consts[target]).reshape(-1)
        return int(values[2]) if len(values) == 4 and values[2] > 0 else None
    concat = producer.get(target)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    third = concat.input[2]
    if third in consts and consts[third] is not None:
        value = numpy_helper.to_array(consts[third]).reshape(-1)
        return int(value[0]) if value.size == 1 and value[0] > 0 else None
    return None


def _shapes(model) -> dict[str, list]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no shapes: nothing is fused
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _prune(graph) -> None:
    """Drop nodes none of whose outputs are used (repeatedly), and initializers nothing reads."""
    keep_outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | keep_outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def count_ops(path: Path, op_type: str) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(n.op_type == op_type for n in model.graph.node)

