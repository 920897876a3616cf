"""The one restricted unpickler of plsc: untrusted pickles (verification .bin files, PLSC .pdparams,
the data.pkl of torch / Lightning files) are read without running any code they name.

    value = safe_loads(data, path, allowed, error=CheckpointError, what="PLSC .pdparams pickle",
                       hint="a .pdparams may only hold numpy arrays, numbers and strings")

1. Pre-scan (`prescan`): the opcodes are walked once, building nothing but a stack of value kinds:
   every counted length must fit in the bytes that remain (the C unpickler allocates a length
   before reading it), memo indices must be dense, and every dict key / set item must be a string,
   bytes, bool, None, an integer below 2**31 or a name (a global): hashing a tuple, float or large
   int key can take unbounded time (a tuple of tuples shared through the memo has 2**depth items;
   integers and floats can be chosen to collide).
2. Globals: `find_class` returns only entries of `allowed` ({(module, name): stand-in}); each
   stand-in is written here, never the real callable, and no module is ever imported. Anything else
   is refused with `<file>: refused to load global 'module.name'`. Stand-ins are immutable: pickled
   state (BUILD) applied to one is refused; only the containers (`InertDict`), numpy's array under
   construction (`_reconstruct`) and numpy's dtype (its exact canonical state) accept it.
3. Persistent ids go to the caller's `persistent_load` (torch storages) or are refused.
4. Every message that echoes a value from the file goes through `brief` (bounded in depth, items
   and characters, whatever the value is), so an error can never be slower than the read.

Stand-ins for numpy's names are in plsc.io.numpy_pickle; `container_globals()` gives inert
stand-ins for harmless containers that real checkpoints name (OrderedDict, Counter,
argparse.Namespace, Lightning's AttributeDict): plain dicts, the named module is never imported;
`BYTES_GLOBALS` the two names protocol 2 uses to spell bytes. `Budget` bounds the bytes all arrays
of one file may copy (a small pickle that reuses one large bytes object for thousands of arrays
cannot allocate without limit).
"""
import io
import itertools
import pickle
import pickletools

import numpy as np

from plsc.errors import Refused

_SMALL_INT = 1 << 31


# ------------------------------------------------------------------ bounded descriptions of file values
def clip(text, limit=200):
    """A message text (an exception's, a name from the file) cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


def brief(value, limit=80):
    """repr() of a value read from a file, bounded whatever it is: at most 3 levels, 4 items per
    container, `limit` characters (a list DAG with 2**40 leaves, a 10**6-digit int, a 1 GB string)."""
    parts, size = [], [0]

    def put(text):
        parts.append(text)
        size[0] += len(text)

    def walk(v, depth):
        if size[0] > limit:
            return
        if v is None or isinstance(v, (bool, float)):
            put(repr(v))
        elif isinstance(v, int):
            put(repr(v) if v.bit_length() <= 64 else f"<int of {v.bit_length()} bits>")
        elif isinstance(v, (str, bytes, bytearray)):
            put(repr(v[:limit]) + ("..." if len(v) > limit else ""))
        elif isinstance(v, np.ndarray):
            put(f"<array {v.dtype.str} {list(v.shape)}>")
        elif isinstance(v, (list, tuple, dict, set, frozenset)):
            opening, closing = "[]" if isinstance(v, list) else "()" if isinstance(v, tuple) else "{}"
            if depth >= 3:
                put(f"{opening}...{closing}")
                return
            put(opening)
            items = v.items() if isinstance(v, dict) else v
            for i, item in enumerate(itertools.islice(items, 5)):
                if i:
                    put(", ")
                if i == 4:
                    put("...")
                    break
                if isinstance(v, dict):
                    walk(item[0], depth + 1)
                    put(": ")
                    walk(item[1], depth + 1)
                else:
                    walk(item, depth + 1)
            put("," + closing if isinstance(v, tuple) and len(v) == 1 else closing)
        else:
            put(repr(v) if isinstance(v, Marker) else f"<{type(v).__name__}>")

    walk(value, 0)
    text = "".join(parts)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------ immutable stand-ins
class Marker:
    """A name a pickle may mention but never call or modify (numpy.ndarray as `_reconstruct`'s
    argument, a Lightning callback class used as a dict key)."""

    __slots__ = ("qualname", "why")

    def __init__(self, qualname, why=""):
        self.qualname, self.why = qualname, why

    def __call__(self, *args, **kwargs):
        raise Refused(f"calling {self.qualname}{self.why}")

    def __setstate__(self, state):
        raise Refused(f"pickled state (BUILD) applied to {self.qualname}")

    def __repr__(self):
        return f"<{self.qualname}>"


class StandIn:
    """A checking function bound to a name a pickle may call (REDUCE); BUILD on it is refused."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname, fn):
        self.qualname, self.fn = qualname, fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __setstate__(self, state):
        raise Refused(f"pickled state (BUILD) applied to {self.qualname}")

    def __repr__(self):
        return f"<{self.qualname}>"


class FileArray(np.ndarray):
    """A finished array handed back to the pickle (torch tensors, protocol-5 numpy arrays): numpy's
    own __setstate__ would rebuild it from any state, unchecked and uncharged, so BUILD is refused."""

    def __setstate__(self, state):
        raise Refused("pickled state (BUILD) applied to a finished array")


def check_key(key):
    """A dict key a checkpoint may use: hashing it is cheap and cannot be made to collide."""
    if key is None or type(key) in (str, bytes, bool, Marker) or \
            (type(key) is int and -_SMALL_INT <= key < _SMALL_INT):
        return key
    raise Refused(f"a dict key / set item {brief(key)} that is not a string, bytes or a small integer")


def latin1_bytes(x):
    if isinstance(x, str):
        return x.encode("latin-1")
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    raise Refused(f"expected bytes, got {type(x).__name__}")


def check_shape(shape, max_ndim):
    if not isinstance(shape, tuple) or len(shape) > max_ndim or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise Refused(f"array shape {brief(shape)} is not a tuple of at most {max_ndim} sizes")
    count = 1
    for n in shape:
        count *= n
    return count


class Budget:
    """The bytes the arrays of one file may copy in all (a multiple of the file's size)."""

    def __init__(self, file_bytes, factor=8, slack=64 << 20):
        self.limit = self.left = factor * file_bytes + slack

    def take(self, nbytes):
        self.left -= nbytes
        if self.left < 0:
            raise Refused(f"its arrays would take more than {self.limit} bytes (far more than the file holds: "
                          f"the same data reused for many arrays)")


# ------------------------------------------------------------------ bytes and containers
def _encode(text, encoding="utf-8"):  # protocol 2 spells bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode with encoding {brief(encoding)}")
    return text.encode("latin-1")


def _bytearray(*args):
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0].encode("latin-1"))
    if not args:
        return bytearray()
    raise Refused("bytearray() of anything but bytes")  # bytearray(2**40) would allocate a terabyte


BYTES_GLOBALS = {("_codecs", "encode"): StandIn("_codecs.encode", _encode)}
for _mod in ("builtins", "__builtin__"):
    BYTES_GLOBALS[(_mod, "bytearray")] = StandIn(f"{_mod}.bytearray", _bytearray)


class InertDict(dict):
    """A plain dict standing for a container class named in a pickle (never imported): built by
    REDUCE (`OrderedDict(pairs)`, keys checked) or NEWOBJ (a dict subclass); pickled attribute state
    (BUILD) is kept as data in `.pickled_state`, never applied to an object."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        if kwargs or len(args) > 1:
            raise Refused("container built with keyword or extra arguments")
        if not args:
            return
        if not isinstance(args[0], (list, tuple, dict)):
            raise Refused("container built from something other than (key, value) pairs")
        for item in args[0].items() if isinstance(args[0], dict) else args[0]:
            if not isinstance(item, tuple) or len(item) != 2:
                raise Refused("container built from something other than (key, value) pairs")
            self[check_key(item[0])] = item[1]

    def __setstate__(self, state):
        self.pickled_state = state


class InertNamespace(InertDict):
    """argparse.Namespace stand-in: its attributes (BUILD state) become the dict's items."""

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise Refused("argparse.Namespace built with arguments")
        super().__init__()

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise Refused("argparse.Namespace state is not a mapping")
        self.update(state)  # the keys were checked when the state dict was built


def container_globals():
    """Harmless containers real checkpoints reference (the named modules are never imported)."""
    out = {("collections", "OrderedDict"): InertDict, ("collections", "Counter"): InertDict,
           ("argparse", "Namespace"): InertNamespace}
    for mod in ("pytorch_lightning.utilities.parsing", "lightning.pytorch.utilities.parsing",
                "lightning_fabric.utilities.data", "lightning.fabric.utilities.data"):
        out[(mod, "AttributeDict")] = InertDict
    for mod, name in (("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
                      ("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"),
                      ("pytorch_lightning.callbacks.early_stopping", "EarlyStopping")):
        out[(mod, name)] = Marker(f"{mod}.{name}")
    return out


# ------------------------------------------------------------------ the pre-scan
_KEY, _VALUE, _MARK = "key", "value", "mark"  # kinds of stack entries
_PUSH_KEY = frozenset({"BININT", "BININT1", "BININT2", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
                       "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                       "NONE", "NEWTRUE", "NEWFALSE", "GLOBAL"})
_PUSH_VALUE = frozenset({"FLOAT", "BINFLOAT", "BYTEARRAY8", "NEXT_BUFFER", "EMPTY_TUPLE", "EMPTY_LIST",
                         "EMPTY_DICT", "EMPTY_SET", "PERSID", "EXT1", "EXT2", "EXT4"})
_INTS = frozenset({"INT", "LONG", "LONG1", "LONG4"})
# opcode -> (items popped (None: down to the mark), what is pushed, which popped items must be keys)
_POP_PUSH = {"TUPLE": (None, _VALUE, None), "LIST": (None, _VALUE, None), "OBJ": (None, _VALUE, None),
             "INST": (None, _VALUE, None), "DICT": (None, _VALUE, "pairs"), "FROZENSET": (None, _VALUE, "all"),
             "POP_MARK": (None, None, None), "APPENDS": (None, None, None), "SETITEMS": (None, None, "pairs"),
             "ADDITEMS": (None, None, "all"), "TUPLE1": (1, _VALUE, None), "TUPLE2": (2, _VALUE, None),
             "TUPLE3": (3, _VALUE, None), "APPEND": (1, None, None), "SETITEM": (2, None, "pairs"),
             "STACK_GLOBAL": (2, _KEY, None), "REDUCE": (2, _VALUE, None), "NEWOBJ": (2, _VALUE, None),
             "NEWOBJ_EX": (3, _VALUE, None), "BUILD": (1, None, None), "BINPERSID": (1, _VALUE, None)}
_NO_EFFECT = frozenset({"PROTO", "FRAME", "STOP", "READONLY_BUFFER"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def _pop(stack, n):
    if n is None:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise Refused("an opcode that needs a mark without one")
    if len(stack) < n or _MARK in stack[len(stack) - n:]:
        raise Refused("stack underflow")
    items = stack[len(stack) - n:]
    del stack[len(stack) - n:]
    return items


def prescan(data):
    """Walk the opcodes once, tracking only what kind of value each stack entry is (see the module doc)."""
    stack, memo = [], {}
    try:
        for ops, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(data))):
            name = op.name
            if name in _PUSH_KEY:
                stack.append(_KEY)
            elif name in _PUSH_VALUE:
                stack.append(_VALUE)
            elif name in _INTS:
                stack.append(_KEY if -_SMALL_INT <= arg < _SMALL_INT else _VALUE)
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "POP":
                if not stack:
                    raise Refused("stack underflow")
                stack.pop()
            elif name == "DUP":
                if not stack or stack[-1] is _MARK:
                    raise Refused("stack underflow")
                stack.append(stack[-1])
            elif name in _PUTS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else arg
                if not 0 <= index <= ops:
                    raise Refused(f"memo index {index} at opcode {ops}")
                if not stack or stack[-1] is _MARK:
                    raise Refused("memoizing an empty stack")
                memo[index] = stack[-1]
            elif name in _GETS:
                if arg not in memo:
                    raise Refused(f"memo index {arg} read before it is written")
                stack.append(memo[arg])
            elif name in _POP_PUSH:
                count, push, keys = _POP_PUSH[name]
                items = _pop(stack, count)
                checked = items[0::2] if keys == "pairs" else items if keys == "all" else ()
                if any(kind is not _KEY for kind in checked):
                    raise Refused("a dict key / set item that is not a string, bytes or a small integer "
                                  "(hashing a tuple, float or large-int key can take unbounded time)")
                if push is not None:
                    stack.append(push)
            elif name not in _NO_EFFECT:
                raise Refused(f"opcode {name}")
    except Refused:
        raise
    except Exception as e:  # short data, unknown opcode, bad argument
        raise Refused(f"{type(e).__name__}: {clip(str(e))}") from None


# ------------------------------------------------------------------ the unpickler
class _Unpickler(pickle.Unpickler):
    def __init__(self, f, path, allowed, error, hint, persistent_load, encoding):
        super().__init__(f, encoding=encoding)
        self._path, self._allowed, self._error, self._hint = path, allowed, error, hint
        self._persistent = persistent_load

    def find_class(self, module, name):
        key = (module.decode("latin-1") if isinstance(module, bytes) else module,
               name.decode("latin-1") if isinstance(name, bytes) else name)
        if key in self._allowed:
            return self._allowed[key]
        raise self._error(f"{self._path}: refused to load global '{clip(key[0], 100)}.{clip(key[1], 100)}': "
                          f"{self._hint}")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise self._error(f"{self._path}: refused a persistent id: {self._hint}")
        return self._persistent(pid)


def safe_loads(data, path, allowed, error, what, hint, persistent_load=None, encoding="bytes"):
    """Unpickle `data` (bytes of `path`) with only `allowed` globals; every failure is one `error`
    naming the file: a refused global, a value the format does not use, a truncated stream."""
    try:
        prescan(data)
        return _Unpickler(io.BytesIO(data), path, allowed, error, hint, persistent_load, encoding).load()
    except error:
        raise
    except Refused as e:
        raise error(f"{path}: not a valid {what}: {e}") from None
    except Exception as e:  # truncated or garbage pickle stream
        raise error(f"{path}: not a readable {what} ({type(e).__name__}: {clip(str(e))})") from None
