/*
 * tensorcodec._fastwire: the per-tensor loops of the wire format in C.
 *
 * A message of thousands of small tensors spends its time in Python bookkeeping, one tensor at a
 * time: validating raw table entries and laying out their segments on decode, and copying the
 * segments into the message on encode. This module does those two loops in C. It decides nothing
 * that wire.py does not: `layout` handles only entries that are valid on the fast path and stops
 * at the first one that is not (wire.py goes on from there and words any error), and `join_into`
 * is b"".join into a buffer the caller owns. wire.py and core.py work the same without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ALIGN 64
#define MAX_SIZE ((uint64_t)INT64_MAX)

/* layout(raw_entries, rows, entry_type, pos, total, max_ndim)
 *   -> (entries, offsets, gaps, decoded, pos, stop)
 *
 * rows maps a dtype name to (row, itemsize). For raw entries [name, [d0, d1, ...]] from index 0
 * on, appends entry_type(row, shape, nbytes, (), (), first_segment) to entries, each segment's
 * start to offsets, and (start, length) of each padding run to gaps; decoded is the sum of
 * nbytes. It stops before the first entry that is not such an entry, has an unknown dtype, a
 * dimension that is not a non-negative int, a size past 2**63 - 1, or runs past total: `stop`
 * is that index (len(raw_entries) when all were done) and pos the layout position before it. */
static PyObject *layout(PyObject *self, PyObject *args)
{
    PyObject *raw, *rows;
    PyTypeObject *entry_type;
    long long pos_in, total_in;
    Py_ssize_t max_ndim;
    if (!PyArg_ParseTuple(args, "O!O!O!LLn", &PyList_Type, &raw, &PyDict_Type, &rows, &PyType_Type, &entry_type,
                          &pos_in, &total_in, &max_ndim))
        return NULL;
    if (!PyType_IsSubtype(entry_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "entry_type must be a tuple subclass");
        return NULL;
    }
    if (pos_in < 0 || total_in < pos_in) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= pos <= total");
        return NULL;
    }
    uint64_t pos = (uint64_t)pos_in, total = (uint64_t)total_in, decoded = 0;
    Py_ssize_t n = PyList_GET_SIZE(raw), i;
    PyObject *entries = PyList_New(0), *offsets = PyList_New(0), *gaps = PyList_New(0);
    PyObject *empty = PyTuple_New(0);
    if (!entries || !offsets || !gaps || !empty)
        goto fail;
    for (i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(raw, i);
        if (!PyList_CheckExact(item) || PyList_GET_SIZE(item) != 2)
            break;
        PyObject *name = PyList_GET_ITEM(item, 0), *dims = PyList_GET_ITEM(item, 1);
        if (!PyUnicode_CheckExact(name) || !PyList_CheckExact(dims) || PyList_GET_SIZE(dims) > max_ndim)
            break;
        PyObject *found = PyDict_GetItemWithError(rows, name); /* borrowed */
        if (!found) {
            if (PyErr_Occurred())
                goto fail;
            break;
        }
        if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2) {
            PyErr_SetString(PyExc_TypeError, "rows must map names to (row, itemsize)");
            goto fail;
        }
        long long itemsize = PyLong_AsLongLong(PyTuple_GET_ITEM(found, 1));
        if (itemsize <= 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "itemsize must be positive");
            goto fail;
        }
        Py_ssize_t ndim = PyList_GET_SIZE(dims), k;
        uint64_t nbytes = (uint64_t)itemsize, span = (uint64_t)itemsize;
        int ok = 1;
        for (k = 0; k < ndim && ok; k++) {
            PyObject *d = PyList_GET_ITEM(dims, k);
            if (!PyLong_CheckExact(d)) { /* bool and other subclasses: Python's loop refuses them */
                ok = 0;
                break;
            }
            int overflow = 0;
            long long v = PyLong_AsLongLongAndOverflow(d, &overflow);
            if (overflow || v < 0) {
                ok = 0;
                break;
            }
            uint64_t u = (uint64_t)v, w = u ? u : 1;
            if (span > MAX_SIZE / w) {
                ok = 0;
                break;
            }
            span *= w;
            nbytes *= u; /* nbytes <= span: cannot overflow */
        }
        if (!ok)
            break;
        uint64_t start = pos;
        if (nbytes) {
            start = (pos + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
            if (start > total || nbytes > total - start)
                break; /* truncated: wire.py says so */
        }
        if (decoded > MAX_SIZE - nbytes)
            break;
        PyObject *shape = PyList_AsTuple(dims);
        PyObject *size = PyLong_FromUnsignedLongLong(nbytes);
        PyObject *first = PyLong_FromSsize_t(PyList_GET_SIZE(offsets));
        PyObject *at = PyLong_FromUnsignedLongLong(start);
        PyObject *entry = entry_type->tp_alloc(entry_type, 6);
        if (!shape || !size || !first || !at || !entry) {
            Py_XDECREF(shape);
            Py_XDECREF(size);
            Py_XDECREF(first);
            Py_XDECREF(at);
            Py_XDECREF(entry);
            goto fail;
        }
        PyObject *row = PyTuple_GET_ITEM(found, 0);
        Py_INCREF(row);
        Py_INCREF(empty);
        Py_INCREF(empty);
        PyTuple_SET_ITEM(entry, 0, row);
        PyTuple_SET_ITEM(entry, 1, shape);
        PyTuple_SET_ITEM(entry, 2, size);
        PyTuple_SET_ITEM(entry, 3, empty);
        PyTuple_SET_ITEM(entry, 4, empty);
        PyTuple_SET_ITEM(entry, 5, first);
        int err = PyList_Append(entries, entry) || PyList_Append(offsets, at);
        Py_DECREF(entry);
        Py_DECREF(at);
        if (err)
            goto fail;
        if (start != pos) {
            PyObject *g0 = PyLong_FromUnsignedLongLong(pos), *g1 = PyLong_FromUnsignedLongLong(start - pos);
            err = !g0 || !g1 || PyList_Append(gaps, g0) || PyList_Append(gaps, g1);
            Py_XDECREF(g0);
            Py_XDECREF(g1);
            if (err)
                goto fail;
        }
        pos = start + nbytes;
        decoded += nbytes;
    }
    Py_DECREF(empty);
    return Py_BuildValue("(NNNKKn)", entries, offsets, gaps, (unsigned long long)decoded, (unsigned long long)pos, i);
fail:
    Py_XDECREF(entries);
    Py_XDECREF(offsets);
    Py_XDECREF(gaps);
    Py_XDECREF(empty);
    return NULL;
}

/* join_into(dst, frames) -> bytes written: b"".join(frames) written into the writable buffer dst.
 * Every frame must be a C-contiguous buffer; ValueError when dst is too small (nothing written). */
static PyObject *join_into(PyObject *self, PyObject *args)
{
    PyObject *dst_obj, *frames;
    if (!PyArg_ParseTuple(args, "OO!", &dst_obj, &PyList_Type, &frames))
        return NULL;
    Py_buffer dst;
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(frames), i, filled = 0;
    Py_buffer *views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    Py_ssize_t total = 0;
    if (!views) {
        PyBuffer_Release(&dst);
        return PyErr_NoMemory();
    }
    for (i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(frames, i), &views[i], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        filled = i + 1;
        if (views[i].len > PY_SSIZE_T_MAX - total) {
            PyErr_SetString(PyExc_OverflowError, "frames too large");
            goto done;
        }
        total += views[i].len;
    }
    if (total > dst.len) {
        PyErr_Format(PyExc_ValueError, "buffer of %zd bytes is too small: the frames need %zd", dst.len, total);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    char *out = dst.buf;
    for (i = 0; i < n; i++) {
        if (views[i].len)
            memcpy(out, views[i].buf, (size_t)views[i].len);
        out += views[i].len;
    }
    Py_END_ALLOW_THREADS
done:
    for (i = 0; i < filled; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyBuffer_Release(&dst);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(total);
}

/* first_nonzero(buf, gaps) -> offset: the first nonzero byte in the runs (start, length, start, length, ...)
 * of buf, or -1 when every byte there is zero. A run past the end of buf is a ValueError. */
static PyObject *first_nonzero(PyObject *self, PyObject *args)
{
    PyObject *buf_obj, *gaps;
    if (!PyArg_ParseTuple(args, "OO!", &buf_obj, &PyList_Type, &gaps))
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(buf_obj, &buf, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const unsigned char *p = buf.buf;
    Py_ssize_t n = PyList_GET_SIZE(gaps), found = -1, i;
    if (n % 2) {
        PyErr_SetString(PyExc_ValueError, "gaps must hold (start, length) pairs");
        goto done;
    }
    for (i = 0; i < n && found < 0; i += 2) {
        Py_ssize_t start = PyLong_AsSsize_t(PyList_GET_ITEM(gaps, i));
        Py_ssize_t len = PyLong_AsSsize_t(PyList_GET_ITEM(gaps, i + 1));
        if (PyErr_Occurred())
            goto done;
        if (start < 0 || len < 0 || start > buf.len || len > buf.len - start) {
            PyErr_SetString(PyExc_ValueError, "a gap lies outside the buffer");
            goto done;
        }
        for (Py_ssize_t k = 0; k < len; k++)
            if (p[start + k]) {
                found = start + k;
                break;
            }
    }
done:
    PyBuffer_Release(&buf);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"first_nonzero", first_nonzero, METH_VARARGS, "Offset of the first nonzero byte in runs of a buffer, or -1."},
    {"layout", layout, METH_VARARGS, "Validated layout of the raw entries of a tensor table (see wire.py)."},
    {"join_into", join_into, METH_VARARGS, "b\"\".join(frames) into a writable buffer; returns the bytes written."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwire", "The wire format's per-tensor loops in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastwire(void) { return PyModule_Create(&module); }
