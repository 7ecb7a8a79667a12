/*
 * tensorcodec._fasttree: the message tree, from msgpack back to Python objects, in C.
 *
 * tree.unflatten unpacks the tree with msgpack and a Python hook per map and per tensor
 * reference: for a message of many small tensors, or a cache-cold decode of a few big ones,
 * those calls cost more than everything else decode does. `unpack_tree` reads the common subset
 * of the tree (maps with str keys, arrays, str, bin, ints, floats, bool, nil and tensor
 * references) directly and answers each reference from tables that materialize.MessageTensors lays out (each
 * kind's when first needed). wire/header.py reads the header map with it too; `strided_sources` is the
 * loop that lays out the torch table of dtypes numpy lacks.
 *
 * It decides nothing that wire/tree.py does not: at anything outside that subset or anything
 * malformed (tuples, big ints, unknown ext codes, duplicate or non-str keys, bad references,
 * nesting past max_depth, truncation, trailing bytes) it returns None without an exception, and
 * wire/tree.py decodes the tree again and words the error. Every count is checked against the bytes
 * left before anything is allocated, so a hostile length costs nothing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* One route per reference kind (ext code 1-3): where a reference's object comes from. */
typedef struct {
    PyObject *cache;   /* list of n objects or None: an item that is not None is the answer */
    PyObject *sources; /* list of n items or NULL: None, a call (fn, *args), or what `convert` takes */
    PyObject *convert; /* callable or NULL (a source that is not a call is the answer) */
    PyObject *make;    /* callable giving `sources` when first needed, or NULL */
    PyObject *made;    /* the list `make` gave (owned), or NULL */
} Route;

typedef struct {
    const unsigned char *p, *end;
    int max_depth;
    uint64_t max_array_len;
    Py_ssize_t n_tensors;
    unsigned char *referenced; /* n_tensors bytes, set to 1 for each index met */
    PyObject *resolve;         /* callable(index, code) for every reference without a route answer */
    Route routes[4];           /* by ext code; routes[0] unused; cache NULL: always resolve */
    int bail;                  /* set when wire/tree.py must decode the tree; no exception then */
} Reader;

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Takes n bytes from the reader, or NULL with bail set when fewer are left. */
static const unsigned char *take(Reader *r, uint64_t n)
{
    if (n > (uint64_t)(r->end - r->p)) {
        r->bail = 1;
        return NULL;
    }
    const unsigned char *at = r->p;
    r->p += n;
    return at;
}

static PyObject *read_obj(Reader *r, int depth);

/* Py_EnterRecursiveCall for a container: a RecursionError (a max_depth beyond the C stack's
 * comfort) leaves the tree to wire/tree.py instead of failing the decode. */
static int enter(Reader *r)
{
    if (!Py_EnterRecursiveCall(" in tensorcodec._fasttree.unpack_tree"))
        return 0;
    if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
        PyErr_Clear();
        r->bail = 1;
    }
    return -1;
}

/* Calls the route's `make` once for its sources: a list of n items, or None for none. */
static int sources_made(Route *route, Py_ssize_t n)
{
    PyObject *made = PyObject_CallNoArgs(route->make);
    route->make = NULL;
    if (!made)
        return -1;
    if (made != Py_None && (!PyList_CheckExact(made) || PyList_GET_SIZE(made) != n)) {
        Py_DECREF(made);
        PyErr_SetString(PyExc_ValueError, "a route's sources must be a list of one item per tensor");
        return -1;
    }
    route->made = made;
    route->sources = made == Py_None ? NULL : made;
    return 0;
}

static PyObject *tensor_ref(Reader *r, int code, const unsigned char *payload, uint64_t size)
{
    if (size != 1 && size != 2 && size != 4) {
        r->bail = 1;
        return NULL;
    }
    uint64_t index = 0;
    for (int i = (int)size - 1; i >= 0; i--)
        index = index << 8 | payload[i]; /* little-endian */
    if (index >= (uint64_t)r->n_tensors) {
        r->bail = 1;
        return NULL;
    }
    Py_ssize_t i = (Py_ssize_t)index;
    r->referenced[i] = 1;
    Route *route = &r->routes[code];
    /* The lists are the caller's: a size changed by Python code run since (a convert, resolve) only
     * sends the reference to resolve. */
    if (route->cache && PyList_GET_SIZE(route->cache) == r->n_tensors) {
        PyObject *done = PyList_GET_ITEM(route->cache, i);
        if (done != Py_None) {
            Py_INCREF(done);
            return done;
        }
        if (route->make && sources_made(route, r->n_tensors) < 0)
            return NULL;
        int listed = route->sources && PyList_GET_SIZE(route->sources) == r->n_tensors;
        PyObject *source = listed ? PyList_GET_ITEM(route->sources, i) : Py_None, *out;
        if (source != Py_None) {
            Py_INCREF(source); /* the call runs Python code */
            if (PyTuple_CheckExact(source) && PyTuple_GET_SIZE(source) > 0)
                out = PyObject_Vectorcall(PyTuple_GET_ITEM(source, 0), &PyTuple_GET_ITEM(source, 1),
                                          (size_t)PyTuple_GET_SIZE(source) - 1, NULL);
            else
                out = route->convert ? PyObject_CallOneArg(route->convert, source) : Py_NewRef(source);
            Py_DECREF(source);
            if (out) {
                if (PyList_GET_SIZE(route->cache) == r->n_tensors)
                    PyList_SetItem(route->cache, i, Py_NewRef(out)); /* steals the new reference */
                return out;
            }
            if (!PyErr_ExceptionMatches(PyExc_Exception))
                return NULL;
            PyErr_Clear(); /* resolve takes the general path, which words any error */
        }
    }
    return PyObject_CallFunction(r->resolve, "ni", i, code);
}

static PyObject *read_ext(Reader *r, uint64_t size)
{
    const unsigned char *head = take(r, 1);
    if (!head)
        return NULL;
    const unsigned char *payload = take(r, size);
    if (!payload)
        return NULL;
    int code = (signed char)head[0];
    if (code < 1 || code > 3) { /* tuples, big ints, bytearrays, timestamps, unknown: wire/tree.py */
        r->bail = 1;
        return NULL;
    }
    return tensor_ref(r, code, payload, size);
}

static PyObject *read_array(Reader *r, uint64_t n, int depth)
{
    /* Every item takes at least one byte: a longer count is malformed, and allocates nothing. */
    if (depth >= r->max_depth || n > (uint64_t)(r->end - r->p) || n > r->max_array_len) {
        r->bail = 1;
        return NULL;
    }
    if (enter(r))
        return NULL;
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (Py_ssize_t i = 0; list && i < (Py_ssize_t)n; i++) {
        PyObject *item = read_obj(r, depth + 1);
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    Py_LeaveRecursiveCall();
    return list;
}

static PyObject *read_map(Reader *r, uint64_t n, int depth)
{
    if (depth >= r->max_depth || n > (uint64_t)(r->end - r->p) / 2) {
        r->bail = 1;
        return NULL;
    }
    if (enter(r))
        return NULL;
    PyObject *dict = PyDict_New();
    if (!dict)
        goto fail;
    for (uint64_t i = 0; i < n; i++) {
        PyObject *key = read_obj(r, depth + 1);
        if (!key)
            goto fail;
        if (!PyUnicode_CheckExact(key)) {
            Py_DECREF(key);
            r->bail = 1;
            goto fail;
        }
        PyObject *value = read_obj(r, depth + 1);
        if (!value) {
            Py_DECREF(key);
            goto fail;
        }
        Py_ssize_t before = PyDict_GET_SIZE(dict);
        int failed = PyDict_SetItem(dict, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed)
            goto fail;
        if (PyDict_GET_SIZE(dict) == before) { /* a duplicate key */
            r->bail = 1;
            goto fail;
        }
    }
    Py_LeaveRecursiveCall();
    return dict;
fail:
    Py_LeaveRecursiveCall();
    Py_XDECREF(dict);
    return NULL;
}

static PyObject *read_str(Reader *r, uint64_t n)
{
    const unsigned char *s = take(r, n);
    if (!s)
        return NULL;
    PyObject *out = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, NULL);
    if (!out && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        r->bail = 1;
    }
    return out;
}

static PyObject *read_bin(Reader *r, uint64_t n)
{
    const unsigned char *s = take(r, n);
    return s ? PyBytes_FromStringAndSize((const char *)s, (Py_ssize_t)n) : NULL;
}

/* The length that follows a marker, in `width` big-endian bytes. */
static int read_len(Reader *r, int width, uint64_t *n)
{
    const unsigned char *at = take(r, (uint64_t)width);
    if (!at)
        return -1;
    *n = be(at, width);
    return 0;
}

static PyObject *read_obj(Reader *r, int depth)
{
    const unsigned char *at = take(r, 1);
    if (!at)
        return NULL;
    unsigned char m = at[0];
    uint64_t n;
    if (m <= 0x7f)
        return PyLong_FromLong(m);
    if (m >= 0xe0)
        return PyLong_FromLong((signed char)m);
    if (m <= 0x8f)
        return read_map(r, m & 0x0f, depth);
    if (m <= 0x9f)
        return read_array(r, m & 0x0f, depth);
    if (m <= 0xbf)
        return read_str(r, m & 0x1f);
    switch (m) {
    case 0xc0:
        Py_RETURN_NONE;
    case 0xc2:
        Py_RETURN_FALSE;
    case 0xc3:
        Py_RETURN_TRUE;
    case 0xc4: case 0xc5: case 0xc6: /* bin 8/16/32 */
        return read_len(r, 1 << (m - 0xc4), &n) ? NULL : read_bin(r, n);
    case 0xc7: case 0xc8: case 0xc9: /* ext 8/16/32 */
        return read_len(r, 1 << (m - 0xc7), &n) ? NULL : read_ext(r, n);
    case 0xca: {
        const unsigned char *b = take(r, 4);
        if (!b)
            return NULL;
        uint32_t bits = (uint32_t)be(b, 4);
        float f;
        memcpy(&f, &bits, 4);
        return PyFloat_FromDouble(f);
    }
    case 0xcb: {
        const unsigned char *b = take(r, 8);
        if (!b)
            return NULL;
        uint64_t bits = be(b, 8);
        double d;
        memcpy(&d, &bits, 8);
        return PyFloat_FromDouble(d);
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: /* uint 8/16/32/64 */
        return read_len(r, 1 << (m - 0xcc), &n) ? NULL : PyLong_FromUnsignedLongLong(n);
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: { /* int 8/16/32/64 */
        int width = 1 << (m - 0xd0);
        if (read_len(r, width, &n))
            return NULL;
        int64_t v = width == 8 ? (int64_t)n : (int64_t)(n ^ (1ULL << (8 * width - 1))) - (int64_t)(1ULL << (8 * width - 1));
        return PyLong_FromLongLong(v);
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext 1/2/4/8/16 */
        return read_ext(r, 1ULL << (m - 0xd4));
    case 0xd9: case 0xda: case 0xdb: /* str 8/16/32 */
        return read_len(r, 1 << (m - 0xd9), &n) ? NULL : read_str(r, n);
    case 0xdc: case 0xdd: /* array 16/32 */
        return read_len(r, 2 << (m - 0xdc), &n) ? NULL : read_array(r, n, depth);
    case 0xde: case 0xdf: /* map 16/32 */
        return read_len(r, 2 << (m - 0xde), &n) ? NULL : read_map(r, n, depth);
    default: /* 0xc1, never used */
        r->bail = 1;
        return NULL;
    }
}

/* Checks one route tuple (cache, sources, convert) or None from Python. */
static int parse_route(PyObject *spec, Py_ssize_t n, Route *route)
{
    memset(route, 0, sizeof *route);
    if (spec == Py_None)
        return 0;
    PyObject *cache, *sources, *convert;
    if (!PyArg_ParseTuple(spec, "O!OO;a route is (cache, sources, convert)", &PyList_Type, &cache, &sources, &convert))
        return -1;
    int listed = PyList_CheckExact(sources);
    if (PyList_GET_SIZE(cache) != n || (listed && PyList_GET_SIZE(sources) != n) ||
        (sources != Py_None && !listed && !PyCallable_Check(sources)) || (convert != Py_None && !PyCallable_Check(convert))) {
        PyErr_SetString(PyExc_ValueError,
                        "a route's lists must have one item per tensor; sources (or what makes them) and convert may "
                        "be callables");
        return -1;
    }
    route->cache = cache;
    route->sources = listed ? sources : NULL;
    route->make = sources != Py_None && !listed ? sources : NULL;
    route->convert = convert == Py_None ? NULL : convert;
    return 0;
}

/* unpack_tree(data, max_depth, referenced, resolve, routes, max_array_len=-1) -> (tree,) or None
 *
 * data: the tree's msgpack bytes (or any msgpack in the subset: wire/header.py reads the header with it
 * too). max_array_len: longer arrays are left to the caller, like msgpack's option of that name. referenced: a bytearray of one byte per table entry; each
 * index met is set to 1. routes: a 4-tuple by ext code (item 0 unused), each None or
 * (cache, sources, convert), where sources may also be a callable that gives them (a list or None)
 * when first needed: a reference to entry i answers cache[i] if it is not None; else, where
 * sources[i] is not None, fn(*args) if it is a call (fn, *args), convert(sources[i]) if there is a
 * convert, sources[i] itself if not, and keeps that in cache[i]; else resolve(i, code). An exception
 * from resolve propagates; one from a source's call leaves the entry to resolve. */
static PyObject *unpack_tree(PyObject *self, PyObject *args)
{
    Py_buffer data, referenced;
    Reader r;
    PyObject *routes, *result = NULL;
    Py_ssize_t max_array_len = -1;
    memset(&r, 0, sizeof r);
    if (!PyArg_ParseTuple(args, "y*iw*OO!|n", &data, &r.max_depth, &referenced, &r.resolve, &PyTuple_Type, &routes,
                          &max_array_len))
        return NULL;
    r.max_array_len = max_array_len < 0 ? UINT64_MAX : (uint64_t)max_array_len;
    r.p = data.buf;
    r.end = r.p + data.len;
    r.n_tensors = referenced.len;
    r.referenced = referenced.buf;
    if (!PyCallable_Check(r.resolve) || PyTuple_GET_SIZE(routes) != 4) {
        PyErr_SetString(PyExc_TypeError, "resolve must be callable and routes a 4-tuple");
        goto done;
    }
    for (int code = 1; code <= 3; code++)
        if (parse_route(PyTuple_GET_ITEM(routes, code), r.n_tensors, &r.routes[code]) < 0)
            goto done;
    PyObject *tree = read_obj(&r, 0);
    if (tree && r.p != r.end) { /* trailing bytes */
        Py_CLEAR(tree);
        r.bail = 1;
    }
    if (tree)
        result = PyTuple_Pack(1, tree);
    else if (r.bail && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
    Py_XDECREF(tree);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&referenced);
    for (int code = 1; code <= 3; code++)
        Py_XDECREF(r.routes[code].made);
    return result;
}

/* C-order strides of a shape tuple, in elements; NULL with an exception for a shape that is not one. */
static PyObject *contiguous_strides(PyObject *shape)
{
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape), k, step = 1;
    PyObject *strides = PyTuple_New(ndim);
    for (k = ndim - 1; strides && k >= 0; k--) {
        Py_ssize_t d = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, k));
        PyObject *stride = d < 0 ? NULL : PyLong_FromSsize_t(step);
        if (!stride) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "negative dimension");
            Py_CLEAR(strides);
            break;
        }
        PyTuple_SET_ITEM(strides, k, stride);
        if (d && step > PY_SSIZE_T_MAX / d) {
            PyErr_SetString(PyExc_OverflowError, "shape too large");
            Py_CLEAR(strides);
            break;
        }
        step *= d;
    }
    return strides;
}

/* strided_sources(views, entries, offsets, plan) -> sources
 *
 * materialize._torch_sources' loop: for each wire.Entry (dtype, shape, nbytes, stages, segments,
 * first_segment), plan[dtype] says where its torch answer comes from: True, views[i]; a pair
 * (as_strided, itemsize), the call (as_strided, shape, C-order strides, element offset) for a raw,
 * non-empty entry; None or absent, None (the decoder calls back). */
static PyObject *strided_sources(PyObject *self, PyObject *args)
{
    PyObject *views, *entries, *offsets, *plan;
    if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyList_Type, &views, &PyList_Type, &entries, &PyList_Type, &offsets,
                          &PyDict_Type, &plan))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(entries), i;
    if (PyList_GET_SIZE(views) != n) {
        PyErr_SetString(PyExc_ValueError, "one view (or None) per entry");
        return NULL;
    }
    PyObject *out = PyList_New(n);
    for (i = 0; out && i < n; i++) {
        PyObject *e = PyList_GET_ITEM(entries, i), *item = Py_None;
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 6) {
            PyErr_SetString(PyExc_TypeError, "entries must be wire.Entry tuples");
            Py_CLEAR(out);
            break;
        }
        PyObject *how = PyDict_GetItemWithError(plan, PyTuple_GET_ITEM(e, 0)); /* borrowed */
        PyObject *shape = PyTuple_GET_ITEM(e, 1), *stages = PyTuple_GET_ITEM(e, 3);
        int nonempty = PyObject_IsTrue(PyTuple_GET_ITEM(e, 2));
        if (PyErr_Occurred() || nonempty < 0) {
            Py_CLEAR(out);
            break;
        }
        if (how == Py_True) {
            item = PyList_GET_ITEM(views, i);
        } else if (how && PyTuple_Check(how) && PyTuple_GET_SIZE(how) == 2 && nonempty && PyTuple_Check(shape) &&
                   PyTuple_Check(stages) && PyTuple_GET_SIZE(stages) == 0) {
            Py_ssize_t first = PyLong_AsSsize_t(PyTuple_GET_ITEM(e, 5));
            Py_ssize_t itemsize = PyLong_AsSsize_t(PyTuple_GET_ITEM(how, 1));
            if (first < 0 || first >= PyList_GET_SIZE(offsets) || itemsize <= 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "bad first segment or itemsize");
                Py_CLEAR(out);
                break;
            }
            Py_ssize_t offset = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, first));
            PyObject *strides = offset < 0 ? NULL : contiguous_strides(shape);
            PyObject *element = strides ? PyLong_FromSsize_t(offset / itemsize) : NULL;
            item = element ? PyTuple_Pack(4, PyTuple_GET_ITEM(how, 0), shape, strides, element) : NULL;
            Py_XDECREF(strides);
            Py_XDECREF(element);
            if (!item) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "bad segment offset");
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, item);
            continue;
        }
        PyList_SET_ITEM(out, i, Py_NewRef(item));
    }
    return out;
}

static PyMethodDef methods[] = {
    {"unpack_tree", unpack_tree, METH_VARARGS, "The message tree from its msgpack bytes, or None (see wire/tree.py)."},
    {"strided_sources", strided_sources, METH_VARARGS, "materialize._torch_sources' loop over the tensor table."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fasttree", "The message tree's decoder in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fasttree(void)
{
    return PyModule_Create(&module);
}
