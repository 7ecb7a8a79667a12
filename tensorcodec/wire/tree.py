"""Trees of containers and scalars to msgpack and back.

The tree travels as msgpack. Plain msgpack already carries dict (str keys),
list, str, bytes, int (64-bit), float, bool and None; everything else is a
msgpack ext type whose code is listed in ``docs/format.md``:

=====  =====================================================
code   meaning (payload)
=====  =====================================================
1      numpy array: index into the tensor table (LE uint)
2      torch tensor: index into the tensor table (LE uint)
3      numpy scalar: index into the tensor table (LE uint)
4      tuple: a msgpack array of the items
5      int beyond 64 bits: signed little-endian two's complement
6      bytearray: the bytes
=====  =====================================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack
import numpy as np

from .. import _c, dtypes
from ..codecs import Quantized
from ..dtypes import DType
from ..errors import DecodeError
from ..leaves import (
    EMPTY,
    NUMPY,
    NUMPY_NATIVE,
    SCALAR,
    TORCH,
    Leaf,
    array_leaf,
    device_leaf,
    encoded_leaf,
    leaf_from_numpy,
    tensor_leaf,
)
from . import header as wire

__all__ = [
    "flatten",
    "map_tensors",
    "Flat",
    "unflatten",
    "format_path",
    "named_leaves",
    "Route",
    "NO_ROUTES",
    "WalkTables",
    "walk_tables",
    "EXT_TUPLE",
    "EXT_BIGINT",
    "EXT_BYTEARRAY",
]

EXT_TUPLE, EXT_BIGINT, EXT_BYTEARRAY = 4, 5, 6
_TENSOR_EXTS = (NUMPY, TORCH, SCALAR)
_INT64_MIN, _UINT64_MAX = -(1 << 63), (1 << 64) - 1
_SUPPORTED = (
    "dict (str keys), list, tuple, str, bytes, bytearray, int, float, bool, None, "
    "numpy arrays and scalars, torch tensors"
)


class _PathError(Exception):
    """Carries the path of an offending leaf up the recursion; re-raised as TypeError/ValueError."""

    def __init__(self, exc_type: type[Exception], message: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.message = message
        self.path: list[Any] = []


def format_path(path: list[Any]) -> str:
    return "root" + "".join(f"[{p!r}]" for p in path)


_REFS: dict[int, list[msgpack.ExtType]] = {NUMPY: [], TORCH: [], SCALAR: []}
"""Interned references to the first table entries, by kind (msgpack's own ExtType constructor is slow)."""


def _ref(kind: int, index: int) -> msgpack.ExtType:
    """ExtType referring to table entry ``index``: a 1, 2 or 4-byte little-endian payload."""
    refs = _REFS[kind]
    if index < len(refs):
        return refs[index]
    if index < 0x10000:
        start = len(refs)
        more = [
            tuple.__new__(msgpack.ExtType, (kind, i.to_bytes(1 if i < 0x100 else 2, "little")))
            for i in range(start, index + 1)
        ]
        if len(refs) == start:  # another thread may have extended it meanwhile; extend is atomic
            refs.extend(more)
        return refs[index] if index < len(refs) else more[index - start]
    return tuple.__new__(msgpack.ExtType, (kind, index.to_bytes(4, "little")))


class _Flattener:
    """One encode: walks the tree, collects leaves, sends a tensor seen twice once."""

    def __init__(self, max_depth: int, names: bool, devices: dict[int, Any] | None = None) -> None:
        self.max_depth = max_depth
        self.devices = devices
        """Where given, tensors on an accelerator are not copied to the CPU: their leaf stays empty
        and the tensor is recorded here by table index, so a codec can quantize it in place."""
        self.leaves: list[Leaf] = []
        self.names: list[str] | None = [] if names else None
        """Dotted path of each leaf (dict keys, list indices), kept only when a policy needs them."""
        self._path: list[str] = []
        self._by_id: dict[int, tuple[Any, int]] = {}
        self._by_ptr: dict[int, list[tuple[Any, int]]] = {}
        torch = sys.modules.get("torch")  # a torch tensor implies torch is imported
        self._tensor_type: Any = torch.Tensor if torch is not None else ()
        self._tensor_exact = (torch.Tensor, torch.nn.Parameter) if torch is not None else ()

    def walk(self, obj: Any, depth: int) -> Any:
        t = type(obj)
        if t in _PLAIN:
            return obj if t is not int or _INT64_MIN <= obj <= _UINT64_MAX else _bigint(obj)
        if t is np.ndarray:
            return self._numpy_leaf(obj)
        if t in self._tensor_exact:
            return self._torch_leaf(obj)
        if depth >= self.max_depth:
            raise _PathError(ValueError, f"nesting deeper than max_depth={self.max_depth} (a reference cycle?)")
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if type(k) is not str:
                    raise _PathError(
                        TypeError,
                        f"dict key {k!r} of type {type(k).__name__} is not a str; only str keys can be encoded",
                    )
                try:
                    tv = type(v)
                    if tv is str or tv is float or tv is bool or v is None:
                        out[k] = v
                    elif tv is np.ndarray and self.names is None:
                        out[k] = self._numpy_leaf(v)
                    elif tv in self._tensor_exact and self.names is None:
                        out[k] = self._torch_leaf(v)
                    else:
                        self._path.append(k)
                        out[k] = self.walk(v, depth + 1)
                        self._path.pop()
                except _PathError as e:
                    e.path.append(k)
                    raise
            return out
        if isinstance(obj, (list, tuple)):
            items = []
            for i, v in enumerate(obj):
                try:
                    self._path.append(str(i))
                    items.append(self.walk(v, depth + 1))
                    self._path.pop()
                except _PathError as e:
                    e.path.append(i)
                    raise
            if isinstance(obj, tuple):
                return tuple.__new__(msgpack.ExtType, (EXT_TUPLE, _pack(items)))
            return items
        if isinstance(obj, (np.ndarray, np.generic, self._tensor_type, Quantized)):
            return self._leaf(obj)
        # Subclasses (IntEnum, str enums, ...) travel as their base type.
        for base, value in _BASES:
            if isinstance(obj, base):
                return self.walk(value(obj), depth)
        if isinstance(obj, bytearray):
            return msgpack.ExtType(EXT_BYTEARRAY, bytes(obj))
        raise _PathError(
            TypeError, f"cannot encode an object of type {t.__module__}.{t.__qualname__}; supported: {_SUPPORTED}"
        )

    def _leaf(self, obj: Any) -> msgpack.ExtType:
        """Reference to ``obj``'s table entry, adding the entry unless the same tensor is there."""
        if type(obj) is np.ndarray:
            return self._numpy_leaf(obj)
        if isinstance(obj, np.ndarray):
            if isinstance(obj, np.ma.MaskedArray):
                raise _PathError(TypeError, "a masked array would lose its mask; send .data and .mask separately")
            return self._numpy_leaf(obj)
        if isinstance(obj, np.generic):
            return self._add(leaf_from_numpy(obj, SCALAR), obj, SCALAR)
        if isinstance(obj, Quantized):
            kind = TORCH if obj.framework == "torch" else NUMPY
            return self._add(encoded_leaf(obj, kind), obj, kind)
        return self._torch_leaf(obj)

    def _numpy_leaf(self, obj: np.ndarray[Any, Any]) -> msgpack.ExtType:
        seen = self._by_id.get(id(obj))
        if seen is not None:
            return _ref(NUMPY, seen[1])
        self._by_id[id(obj)] = (obj, len(self.leaves))  # holding obj keeps its id unique
        return self._add(array_leaf(obj), obj, NUMPY)

    def _torch_leaf(self, obj: Any) -> msgpack.ExtType:
        # Tensors sharing storage, offset and layout (tied weights) are sent once.
        try:
            ptr = obj.data_ptr()
        except RuntimeError:  # sparse layouts have no storage; leaf_from_torch says so below
            ptr = 0
        if ptr:
            same_ptr = self._by_ptr.get(ptr)
            if same_ptr is None:
                self._by_ptr[ptr] = [(obj, len(self.leaves))]
            else:
                for other, index in same_ptr:
                    if (
                        other.dtype == obj.dtype
                        and other.shape == obj.shape
                        and other.stride() == obj.stride()
                        and other.device == obj.device
                        and other.is_conj() == obj.is_conj()
                        and other.is_neg() == obj.is_neg()
                    ):
                        return _ref(TORCH, index)
                same_ptr.append((obj, len(self.leaves)))
        leaf: Leaf | None
        if self.devices is not None and obj.device.type not in ("cpu", "meta"):
            leaf = device_leaf(obj)
            if leaf is not None:
                self.devices[len(self.leaves)] = obj
        else:
            try:
                leaf = tensor_leaf(obj)
            except TypeError as e:
                raise _PathError(TypeError, str(e)) from None
        return self._add(leaf, obj, TORCH)

    def _add(self, leaf: Leaf | None, obj: Any, kind: int) -> msgpack.ExtType:
        if leaf is None:
            raise _PathError(
                TypeError, f"dtype {obj.dtype} cannot be encoded; tensorcodec.DTYPES lists the supported ones"
            )
        self.leaves.append(leaf)
        if self.names is not None:
            self.names.append(".".join(self._path))
        return _ref(kind, len(self.leaves) - 1)


_PLAIN = {str, float, bool, bytes, int, type(None)}
# The base type's own conversion: str(obj) would call a subclass's __str__ ("Color.RED" for a str Enum).
_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (int, int.__int__),
    (float, float.__float__),
    (str, str.__str__),
    (bytes, lambda b: bytes(memoryview(b))),
)


def _bigint(v: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_BIGINT, v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True))


def _pack(obj: Any) -> bytes:
    return wire.packb(obj)


class Flat(NamedTuple):
    """A flattened tree: what ``flatten`` gives."""

    tree: bytes
    """The tree's msgpack bytes, tensors replaced by references."""
    leaves: list[Leaf]
    """The tensors, in table order."""
    names: list[str] | None
    """Their dotted paths, where asked for."""


def flatten(obj: Any, max_depth: int, names: bool = False, devices: dict[int, Any] | None = None) -> Flat:
    """msgpack bytes of the tree, its tensors in table order and (if ``names``) their dotted paths.

    With ``devices``, tensors on an accelerator get an empty leaf and are
    recorded there by index (see ``_Flattener.devices``). Raises TypeError
    (unsupported object) or ValueError (too deep) naming the path of the
    offending object.
    """
    fast = _c.wire()
    if fast is not None and not names:  # it bails on accelerator tensors, which leaves devices empty
        done = fast.plain_walk(obj, max_depth, walk_tables())
        if done is not None:
            return Flat(_pack(done[0]), done[1], None)
    f = _Flattener(max_depth, names, devices)
    try:
        tree = f.walk(obj, 0)
    except _PathError as e:
        raise e.exc_type(f"{format_path(e.path[::-1])}: {e.message}") from None
    return Flat(_pack(tree), f.leaves, f.names)


class WalkTables(NamedTuple):
    """What ``_fastwire.plain_walk`` reads, by position: dtype tables of numpy's own dtypes, the types it handles."""

    numpy_rows: dict[Any, DType]
    torch_rows: dict[Any, tuple[DType, int, bool]]
    """torch dtype -> (row, itemsize, is_complex)."""
    ndarray_type: type
    tensor_types: tuple[type, ...]
    """The exact torch tensor types (empty without torch)."""
    leaf_type: type
    ext_type: type
    empty: np.ndarray[Any, Any]
    numpy_refs: list[msgpack.ExtType]
    torch_refs: list[msgpack.ExtType]
    strided: Any
    """``torch.strided``, or None without torch."""


def walk_tables() -> WalkTables:
    """The tables of ``_fastwire.plain_walk``, built once (again once torch is imported)."""
    global _TABLES
    torch = sys.modules.get("torch")
    if _TABLES is None or (torch is not None and not _TABLES.tensor_types):
        # bool leaves take the Python walk, which makes stray bool bytes 0/1 (leaves._canonical).
        numpy_rows = {row.numpy: row for row in dtypes.DTYPES if row.name in NUMPY_NATIVE and row.max_byte == 255}
        torch_rows: dict[Any, tuple[DType, int, bool]] = {}
        tensor_types: tuple[type, ...] = ()
        strided = None
        if torch is not None:
            torch_rows = {
                t: (row, row.itemsize, row.is_complex)
                for t, row in dtypes.torch_table().items()
                if row.name in NUMPY_NATIVE and row.max_byte == 255
            }
            tensor_types = (torch.Tensor, torch.nn.Parameter)
            strided = torch.strided
        _TABLES = WalkTables(
            numpy_rows,
            torch_rows,
            np.ndarray,
            tensor_types,
            Leaf,
            msgpack.ExtType,
            EMPTY,
            _REFS[NUMPY],
            _REFS[TORCH],
            strided,
        )
    return _TABLES


_TABLES: WalkTables | None = None


class Route(NamedTuple):
    """How ``_fasttree`` answers references of one kind without calling back (it reads the fields by position).

    A reference to entry i answers ``cache[i]`` where that is not None; else, where ``sources[i]`` is
    not None, ``fn(*args)`` for a call ``(fn, *args)``, ``convert(sources[i])`` or ``sources[i]``
    itself, kept in ``cache[i]``; else ``tensor(i, kind)``. A call that raises leaves the entry to
    ``tensor``.
    """

    cache: list[Any]
    sources: list[Any] | Callable[[], list[Any] | None] | None
    """The sources, or a function that makes them, called at the first reference that needs them."""
    convert: Callable[[Any], Any] | None


NO_ROUTES: tuple[Route | None, ...] = wire.NO_ROUTES
"""Routes where no tables are laid out: every reference calls ``tensor``."""


def unflatten(
    data: bytes | memoryview,
    tensor: Callable[[int, int], Any],
    n_tensors: int,
    max_depth: int,
    routes: tuple[Route | None, ...] = NO_ROUTES,
) -> Any:
    """The tree from its msgpack bytes; ``tensor(index, kind)`` resolves references.

    ``routes`` (by kind, item 0 unused) lets the C decoder answer references from
    tables the caller lays out (see ``Route``). Raises DecodeError for anything malformed: unknown
    ext codes, duplicate or non-str keys, bad indices, nesting beyond
    ``max_depth``, and table entries that the tree never references.
    """
    referenced = bytearray(n_tensors)
    fast = _c.tree()
    done = None if fast is None else fast.unpack_tree(data, max_depth, referenced, tensor, routes)
    if done is not None:
        tree = done[0]
    else:  # no C decoder, or it left the tree here (tuples, big ints, errors)
        referenced = bytearray(n_tensors)
        tree = _unpack_tree(data, tensor, referenced, max_depth)
    missing = referenced.find(0)
    if missing >= 0:
        raise DecodeError(f"tensor {missing} is in the table but the tree never references it")
    return tree


def _unpack_tree(
    data: bytes | memoryview, tensor: Callable[[int, int], Any], referenced: bytearray, max_depth: int
) -> Any:
    """``unflatten``'s tree through msgpack and Python hooks; marks each entry referenced."""
    n_tensors = len(referenced)
    from_bytes = int.from_bytes

    def pairs(items: list[tuple[Any, Any]]) -> dict[str, Any]:
        d = dict(items)
        if len(d) != len(items):
            seen: set[Any] = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise DecodeError(f"tree: duplicate dict key {dup!r}")
        for k in d:
            if type(k) is not str:
                raise DecodeError(f"tree: dict key {k!r} is not a str")
        return d

    def ext(code: int, payload: bytes) -> Any:
        if 1 <= code <= 3:  # a tensor reference (_TENSOR_EXTS)
            size = len(payload)
            if size != 1 and size != 2 and size != 4:
                raise DecodeError(f"tree: tensor reference of {size} bytes (expected 1, 2 or 4)")
            index = from_bytes(payload, "little")
            if index >= n_tensors:
                raise DecodeError(f"tree: reference to tensor {index}, but the table has {n_tensors}")
            referenced[index] = 1
            return tensor(index, code)
        if code == EXT_TUPLE:
            return _TuplePayload(payload)
        if code == EXT_BIGINT:
            if not payload:
                raise DecodeError("tree: empty big-int payload")
            value = int.from_bytes(payload, "little", signed=True)
            if _INT64_MIN <= value <= _UINT64_MAX or len(payload) != (value.bit_length() + 8) // 8:
                raise DecodeError(
                    f"tree: big int {value} in {len(payload)} bytes: it must be outside the 64-bit range, in its "
                    "shortest form (ext 5 is only for what a msgpack int cannot hold)"
                )
            return value
        if code == EXT_BYTEARRAY:
            return bytearray(payload)
        raise DecodeError(f"tree: unknown ext type code {code}")

    def unpack(b: bytes | memoryview) -> Any:
        try:
            return msgpack.unpackb(
                b, raw=False, use_list=True, strict_map_key=True, ext_hook=ext, object_pairs_hook=pairs
            )
        except (DecodeError, ImportError):  # ImportError: the receiver lacks torch, which a tensor needs
            raise
        except Exception as e:  # msgpack reports malformed input through many types
            raise DecodeError(f"tree: malformed msgpack ({type(e).__name__}: {e})") from None

    def expand(payload: bytes) -> _Tuple:
        items = unpack(payload)
        if type(items) is not list:
            raise DecodeError("tree: tuple payload is not a msgpack array")
        return _Tuple(items)

    return _finish(unpack(data), max_depth, expand)


_LEAF_TYPES = frozenset({str, int, float, bool, bytes, bytearray, type(None), np.ndarray})
"""Decoded values that ``_finish`` passes over at once (anything else not a container is passed over too)."""


class _Tuple(list):  # type: ignore[type-arg]
    """Marks a decoded tuple until _finish converts it (msgpack builds bottom-up)."""


class _TuplePayload:
    """A tuple's still-packed items.

    _finish unpacks them one level at a time: unpacking them from inside
    msgpack's ext hook would nest a C unpacker (tens of KiB of stack) per
    level, and a small message of nested tuples would overflow the stack.
    """

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def _finish(tree: Any, max_depth: int, expand: Callable[[bytes], _Tuple]) -> Any:
    """Checks the nesting depth, unpacks tuples and turns them into tuples, in one walk."""
    holder = [tree]
    stack: list[tuple[Any, int]] = [(holder, -1)]
    fixups: list[tuple[Any, Any, _Tuple]] = []
    timestamp = msgpack.Timestamp
    while stack:
        node, depth = stack.pop()
        if depth >= max_depth:
            raise DecodeError(f"tree: nesting deeper than max_depth={max_depth}")
        # Assigning to existing keys while iterating is safe: the dict's size never changes.
        for k, v in node.items() if type(node) is dict else enumerate(node):
            tv = type(v)
            if tv in _LEAF_TYPES:
                continue
            if tv is _TuplePayload:
                v = node[k] = expand(v.payload)
                tv = _Tuple
            if tv is dict or tv is list or tv is _Tuple:
                stack.append((v, depth + 1))
                if tv is _Tuple:
                    fixups.append((node, k, v))
            elif tv is timestamp:
                raise DecodeError("tree: msgpack timestamp (ext type -1) is not a tensorcodec type")
    # Innermost first, so that a tuple's items are final before it is frozen.
    for parent, key, marker in reversed(fixups):
        parent[key] = tuple(marker)
    return holder[0]


def map_tensors(obj: Any, is_leaf: Callable[[Any], bool], change: Callable[[Any, str], Any]) -> Any:
    """A copy of the containers of ``obj`` with every leaf replaced by ``change(leaf, dotted path)``.

    A leaf placed under several paths (tied weights) is changed once, at its first path, and the
    result placed under all of them. Leaves of other kinds are kept as they are.
    """
    done: dict[int, Any] = {}

    def visit(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: visit(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            items = [visit(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
            return items if isinstance(node, list) else tuple(items)
        if not is_leaf(node):
            return node
        if id(node) not in done:
            done[id(node)] = change(node, path)
        return done[id(node)]

    return visit(obj, "")


def named_leaves(obj: Any, is_leaf: Callable[[Any], bool]) -> list[tuple[str, Any]]:
    """``(dotted path, leaf)`` for every leaf of a decoded tree, in tree order.

    Paths join dict keys and list/tuple indices with dots, as policies name tensors.
    """
    out: list[tuple[str, Any]] = []
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            items: list[tuple[Any, Any]] = list(node.items())
        elif isinstance(node, (list, tuple)):
            items = list(enumerate(node))
        else:
            if is_leaf(node):
                out.append((path, node))
            continue
        stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(items))
    return out
