/*
 * tensorcodec._fastwire: the per-tensor loops of the wire format in C.
 *
 * A message of thousands of small tensors spends its time in Python bookkeeping, one tensor at a
 * time: validating raw table entries and laying out their segments on decode, and copying the
 * segments into the message on encode. This module does those two loops in C. It decides nothing
 * that wire/header.py does not: `layout` handles only entries that are valid on the fast path and stops
 * at the first one that is not (wire/header.py goes on from there and words any error), and `join_into`
 * is b"".join into a buffer the caller owns. wire/header.py and core.py work the same without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

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
                break; /* truncated: wire/header.py says so */
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

/* ------------------------------------------------------------------------------------------ joining frames */

#define JOIN_BATCH 256
/* Frames whose buffers are held at once: one Py_buffer per frame of a message of thousands of small
 * tensors would take 80 bytes each, fresh memory that sits on top of the output at its peak. */
#define JOIN_NOGIL_BYTES (256 << 10)
/* A batch holding this many bytes is copied with the GIL released; smaller ones cost less than the switch. */

/* The buffer of frames[i], held while it is copied. */
static int get_frame(PyObject *frames, Py_ssize_t i, Py_buffer *view)
{
    PyObject *frame = PyList_GET_ITEM(frames, i);
    Py_INCREF(frame);
    int err = PyObject_GetBuffer(frame, view, PyBUF_C_CONTIGUOUS);
    Py_DECREF(frame);
    return err;
}

/* ValueError for a buffer of cap bytes, naming what the frames need: `need` for those before frames[i]. */
static void too_small(PyObject *frames, Py_ssize_t i, Py_ssize_t need, Py_ssize_t cap)
{
    Py_buffer view;
    for (; i < PyList_GET_SIZE(frames); i++) {
        if (get_frame(frames, i, &view) < 0)
            return;
        need += view.len;
        PyBuffer_Release(&view);
    }
    PyErr_Format(PyExc_ValueError, "buffer of %zd bytes is too small: the frames need %zd", cap, need);
}

static void copy_views(const Py_buffer *views, Py_ssize_t n, char *at)
{
    for (Py_ssize_t k = 0; k < n; k++) {
        if (views[k].len)
            memcpy(at, views[k].buf, (size_t)views[k].len);
        at += views[k].len;
    }
}

/* b"".join(frames) written to out[0:cap], a batch of frames at a time: returns the bytes written, or -1
 * with an exception set (ValueError when cap is too small; the batches that fitted were written).
 * With `consume`, each frame copied is replaced by None in the list, so that memory only the list
 * holds (the header, copies of strided tensors) is freed before the output is complete. */
static Py_ssize_t copy_frames_into(PyObject *frames, char *out, Py_ssize_t cap, int consume)
{
    Py_ssize_t most = PyList_GET_SIZE(frames) < JOIN_BATCH ? PyList_GET_SIZE(frames) : JOIN_BATCH;
    if (most < 1)
        most = 1;
    Py_buffer *views = PyMem_Malloc((size_t)most * sizeof(Py_buffer));
    if (!views) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0, i = 0, k;
    int ok = 1;
    while (ok && i < PyList_GET_SIZE(frames)) {
        Py_ssize_t held = 0, bytes = 0, first = i;
        while (held < most && i < PyList_GET_SIZE(frames)) {
            if (get_frame(frames, i, &views[held]) < 0) {
                ok = 0;
                break;
            }
            Py_ssize_t len = views[held].len;
            held++;
            i++;
            if (len > cap - pos - bytes) {
                too_small(frames, i, pos + bytes + len, cap);
                ok = 0;
                break;
            }
            bytes += len;
        }
        if (ok) {
            if (bytes >= JOIN_NOGIL_BYTES) {
                Py_BEGIN_ALLOW_THREADS
                copy_views(views, held, out + pos);
                Py_END_ALLOW_THREADS
            } else {
                copy_views(views, held, out + pos);
            }
            pos += bytes;
        }
        for (k = 0; k < held; k++)
            PyBuffer_Release(&views[k]);
        for (k = first; ok && consume && k < i && k < PyList_GET_SIZE(frames); k++)
            ok = PyList_SetItem(frames, k, Py_NewRef(Py_None)) == 0;
    }
    PyMem_Free(views);
    return ok ? pos : -1;
}

/* join_into(dst, frames) -> bytes written: b"".join(frames) written into the writable buffer dst.
 * Every frame must be a C-contiguous buffer; ValueError when dst is too small. */
static PyObject *join_into(PyObject *self, PyObject *args)
{
    PyObject *dst_obj, *frames;
    if (!PyArg_ParseTuple(args, "OO!", &dst_obj, &PyList_Type, &frames))
        return NULL;
    Py_buffer dst;
    if (PyObject_GetBuffer(dst_obj, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t n = copy_frames_into(frames, dst.buf, dst.len, 0);
    PyBuffer_Release(&dst);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

#define HUGE_PAGE ((Py_ssize_t)2 << 20) /* a transparent huge page on x86-64 and most arm64 kernels */
#define BYTES_OVERHEAD 57
/* glibc serves a malloc(m) above its mmap threshold with a mapping of ALIGN_UP(((m + 23) & ~15) + 8, page);
 * a bytes object of n bytes asks for n + 33. Asking for L - 57 bytes makes the mapping exactly L long. */

#if defined(MADV_HUGEPAGE)
#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25 /* Linux 6.1; older kernels refuse it, which costs nothing */
#endif
static uintptr_t page_size = 4096;
static int thp_enabled; /* transparent huge pages are on ("always" or "madvise"), read at import */

static int read_thp_enabled(void)
{
    char line[128] = {0};
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return 0;
    int ok = fgets(line, sizeof line, f) != NULL && strstr(line, "[never]") == NULL;
    fclose(f);
    return ok;
}

/* Huge pages for the whole 2 MiB pages that the data at p[0:size] will fill, before they are touched.
 * Writing fresh 4 KiB pages costs a fault each (~1.7 GB/s here); huge pages make the copy several
 * times faster. Advice only: failure changes nothing but speed. */
static void advise_huge(char *p, Py_ssize_t size)
{
    uintptr_t start = (uintptr_t)p & ~(page_size - 1);
    uintptr_t end = ((uintptr_t)p + (uintptr_t)size) & ~((uintptr_t)HUGE_PAGE - 1);
    if (end <= start)
        return;
    madvise((void *)start, end - start, MADV_HUGEPAGE);
#if defined(MADV_COLLAPSE)
    /* malloc and the bytes header already touched the first page, so the first huge page would be
     * faulted in 4 KiB pages: turn it into a huge page now, while it holds only that header. */
    if (start % (uintptr_t)HUGE_PAGE == 0)
        madvise((void *)start, (size_t)HUGE_PAGE, MADV_COLLAPSE);
#endif
}
#endif

/* join_bytes(frames, size) -> b"".join(frames), which must be size bytes (ValueError otherwise). It
 * empties the list as it goes: each frame copied is replaced by None.
 *
 * From 2 MiB on Linux with transparent huge pages on, the bytes object is placed for them: asked for a
 * little more than size, so that malloc maps a whole number of 2 MiB pages, which the kernel aligns to
 * 2 MiB; then shrunk to size (glibc gives the untouched tail back with mremap). */
static PyObject *join_bytes(PyObject *self, PyObject *args)
{
    PyObject *frames;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &frames, &size))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    Py_ssize_t alloc = size;
#if defined(MADV_HUGEPAGE)
    int huge = thp_enabled && size >= HUGE_PAGE && size <= PY_SSIZE_T_MAX - BYTES_OVERHEAD - HUGE_PAGE;
    if (huge)
        alloc = (size + BYTES_OVERHEAD + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE - BYTES_OVERHEAD;
#endif
    PyObject *out = PyBytes_FromStringAndSize(NULL, alloc);
    if (!out)
        return NULL;
#if defined(MADV_HUGEPAGE)
    if (huge)
        advise_huge(PyBytes_AS_STRING(out), size);
#endif
    Py_ssize_t n = copy_frames_into(frames, PyBytes_AS_STRING(out), size, 1);
    if (n >= 0 && n != size)
        PyErr_Format(PyExc_ValueError, "the frames hold %zd bytes, not %zd", n, size);
    if (n != size) {
        Py_DECREF(out);
        return NULL;
    }
    if (alloc != size && _PyBytes_Resize(&out, size) < 0)
        return NULL;
    return out;
}

/* The parts of a message, read as one byte string: buffers acquired one at a time as a forward walk
 * reaches them. */
typedef struct {
    PyObject *parts; /* list of buffers */
    Py_ssize_t index, start; /* the part held, and its offset in the message */
    Py_buffer view;
    int held;
} Parts;

/* Moves to the part holding message offset pos (never backwards): 0, or -1 with ValueError past the end. */
static int parts_seek(Parts *m, Py_ssize_t pos)
{
    while (!m->held || pos >= m->start + m->view.len) {
        if (m->held) {
            m->start += m->view.len;
            m->index++;
            PyBuffer_Release(&m->view);
            m->held = 0;
        }
        if (m->index >= PyList_GET_SIZE(m->parts)) {
            PyErr_SetString(PyExc_ValueError, "a gap lies outside the buffer");
            return -1;
        }
        PyObject *part = PyList_GET_ITEM(m->parts, m->index);
        Py_INCREF(part);
        int err = PyObject_GetBuffer(part, &m->view, PyBUF_C_CONTIGUOUS);
        Py_DECREF(part);
        if (err < 0)
            return -1;
        m->held = 1;
    }
    return 0;
}

/* first_nonzero(buf, gaps) -> offset: the first nonzero byte in the runs (start, length, start, length, ...)
 * of buf, or -1 when every byte there is zero. buf is one buffer, or a list of buffers read as their
 * concatenation (a message in frames; the runs must then come in order). A run past the end is a ValueError. */
static PyObject *first_nonzero(PyObject *self, PyObject *args)
{
    PyObject *buf_obj, *gaps;
    if (!PyArg_ParseTuple(args, "OO!", &buf_obj, &PyList_Type, &gaps))
        return NULL;
    Parts m;
    memset(&m, 0, sizeof m);
    if (PyList_CheckExact(buf_obj)) {
        m.parts = buf_obj;
    } else {
        if (PyObject_GetBuffer(buf_obj, &m.view, PyBUF_C_CONTIGUOUS) < 0)
            return NULL;
        m.held = 1;
    }
    Py_ssize_t n = PyList_GET_SIZE(gaps), found = -1, i, end = 0;
    if (n % 2) {
        PyErr_SetString(PyExc_ValueError, "gaps must hold (start, length) pairs");
        goto done;
    }
    for (i = 0; i < n && found < 0; i += 2) {
        Py_ssize_t start = PyLong_AsSsize_t(PyList_GET_ITEM(gaps, i));
        Py_ssize_t len = PyLong_AsSsize_t(PyList_GET_ITEM(gaps, i + 1));
        if (PyErr_Occurred())
            goto done;
        if (start < 0 || len < 0 || (m.parts && start < end)) {
            PyErr_SetString(PyExc_ValueError, "gaps must be in order, at non-negative offsets");
            goto done;
        }
        if (!m.parts) {
            if (start > m.view.len || len > m.view.len - start) {
                PyErr_SetString(PyExc_ValueError, "a gap lies outside the buffer");
                goto done;
            }
            const unsigned char *p = m.view.buf;
            for (Py_ssize_t k = 0; k < len; k++)
                if (p[start + k]) {
                    found = start + k;
                    break;
                }
            continue;
        }
        for (Py_ssize_t pos = start; pos < start + len; pos++) {
            if (parts_seek(&m, pos) < 0)
                goto done;
            if (((const unsigned char *)m.view.buf)[pos - m.start]) {
                found = pos;
                break;
            }
        }
        end = start + len;
    }
done:
    if (m.held)
        PyBuffer_Release(&m.view);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(found);
}

/* ------------------------------------------------------------------------------------------ TensorBytes */

/* The bytes of a contiguous CPU tensor: exported through the buffer protocol (read-only, format "B",
 * one dimension), with the tensor held so that its memory stays. This is what plain_walk keeps of a
 * torch tensor instead of t.numpy(), which costs more than all the checks it makes together. Like a
 * numpy array, it is not tracked by the garbage collector (it only ever refers to a tensor). */
typedef struct {
    PyObject_HEAD
    PyObject *owner;
    char *buf;
    Py_ssize_t len;
} TensorBytes;

static void tensor_bytes_dealloc(PyObject *self)
{
    Py_XDECREF(((TensorBytes *)self)->owner);
    Py_TYPE(self)->tp_free(self);
}

static int tensor_bytes_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    TensorBytes *b = (TensorBytes *)self;
    return PyBuffer_FillInfo(view, self, b->buf, b->len, 1, flags);
}

static PyObject *tensor_bytes_nbytes(PyObject *self, void *closure)
{
    return PyLong_FromSsize_t(((TensorBytes *)self)->len);
}

static PyBufferProcs tensor_bytes_as_buffer = {tensor_bytes_getbuffer, NULL};

static PyGetSetDef tensor_bytes_getset[] = {
    {"nbytes", tensor_bytes_nbytes, NULL, "Size in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TensorBytesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tensorcodec._fastwire.TensorBytes",
    .tp_basicsize = sizeof(TensorBytes),
    .tp_dealloc = tensor_bytes_dealloc,
    .tp_as_buffer = &tensor_bytes_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A tensor's bytes, read-only through the buffer protocol; holds the tensor.",
    .tp_getset = tensor_bytes_getset,
};

/* ------------------------------------------------------------------------------------------ plain_walk */

/* What one plain_walk call needs; the tables and types come from wire/tree.py. */
typedef struct {
    int max_depth;
    PyObject *numpy_rows;   /* dict: numpy dtype -> row, for dtypes whose arrays export their buffer */
    PyObject *torch_rows;   /* dict: torch dtype -> (row, itemsize, is_complex), the same dtypes */
    PyObject *ndarray_type; /* numpy.ndarray */
    PyObject *tensor_types; /* tuple of exact torch tensor types (may be empty) */
    PyTypeObject *leaf_type;
    PyTypeObject *ext_type;
    PyObject *empty;   /* the empty uint8 array of a zero-size leaf */
    PyObject *numpy_refs, *torch_refs; /* tree._REFS[1], tree._REFS[2] */
    PyObject *strided; /* torch.strided (None without torch) */
    PyObject *leaves;  /* list being filled */
    PyObject *seen;    /* set of ids (numpy) and data pointers (torch) met so far */
    int bail;          /* set when the tree needs wire/tree.py's general walk; no exception then */
} Walk;

static PyObject *k_dtype, *k_flags, *k_c_contiguous, *k_shape, *k_size, *k_data_ptr, *k_layout, *k_is_cpu,
    *k_is_contiguous, *k_is_neg, *k_is_conj;

static PyObject *new_reference(Walk *w, long kind, Py_ssize_t index);

/* msgpack.ExtType(kind, index as 1, 2 or 4 little-endian bytes), as tree._ref makes it: taken from
 * tree._REFS[kind], which interns the first 65536 and which this extends as tree._ref does. */
static PyObject *reference(Walk *w, long kind, Py_ssize_t index)
{
    PyObject *refs = kind == 1 ? w->numpy_refs : w->torch_refs;
    if (index >= 0x10000)
        return new_reference(w, kind, index);
    while (PyList_GET_SIZE(refs) <= index) {
        Py_ssize_t next = PyList_GET_SIZE(refs);
        PyObject *ref = new_reference(w, kind, next);
        if (!ref)
            return NULL;
        /* Allocating may run a collection and let another thread extend the list: append only in place. */
        if (PyList_GET_SIZE(refs) == next && PyList_Append(refs, ref) < 0) {
            Py_DECREF(ref);
            return NULL;
        }
        Py_DECREF(ref);
    }
    PyObject *ref = PyList_GET_ITEM(refs, index);
    Py_INCREF(ref);
    return ref;
}

static PyObject *new_reference(Walk *w, long kind, Py_ssize_t index)
{
    unsigned char le[4] = {(unsigned char)index, (unsigned char)(index >> 8), (unsigned char)(index >> 16),
                           (unsigned char)(index >> 24)};
    Py_ssize_t width = index < 0x100 ? 1 : index < 0x10000 ? 2 : 4;
    PyObject *code = PyLong_FromLong(kind), *payload = PyBytes_FromStringAndSize((const char *)le, width);
    PyObject *ref = w->ext_type->tp_alloc(w->ext_type, 2);
    if (!code || !payload || !ref) {
        Py_XDECREF(code);
        Py_XDECREF(payload);
        Py_XDECREF(ref);
        return NULL;
    }
    PyTuple_SET_ITEM(ref, 0, code);
    PyTuple_SET_ITEM(ref, 1, payload);
    return ref;
}

/* 1 if the key was new and is now in w->seen, 0 if it was there already, -1 on error. */
static int first_sight(Walk *w, PyObject *key)
{
    int has = PySet_Contains(w->seen, key);
    if (has < 0)
        return -1;
    if (has)
        return 0;
    return PySet_Add(w->seen, key) < 0 ? -1 : 1;
}

/* Appends the leaf (kind, row, shape, data, None) and returns its table reference. */
static PyObject *append_leaf(Walk *w, long kind, PyObject *row, PyObject *shape, PyObject *data)
{
    PyObject *leaf = w->leaf_type->tp_alloc(w->leaf_type, 5);
    if (!leaf)
        return NULL;
    PyTuple_SET_ITEM(leaf, 0, PyLong_FromLong(kind));
    Py_INCREF(row);
    PyTuple_SET_ITEM(leaf, 1, row);
    Py_INCREF(shape);
    PyTuple_SET_ITEM(leaf, 2, shape);
    Py_INCREF(data);
    PyTuple_SET_ITEM(leaf, 3, data);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(leaf, 4, Py_None);
    PyObject *result = NULL;
    if (PyTuple_GET_ITEM(leaf, 0) && PyList_Append(w->leaves, leaf) == 0)
        result = reference(w, kind, PyList_GET_SIZE(w->leaves) - 1);
    Py_DECREF(leaf);
    return result;
}

/* A leaf for a C-contiguous array of a known dtype: its table reference, or NULL with w->bail set. */
static PyObject *add_leaf(Walk *w, long kind, PyObject *row, PyObject *arr)
{
    PyObject *flags = PyObject_GetAttr(arr, k_flags), *contiguous = NULL, *shape = NULL, *size = NULL;
    PyObject *result = NULL;
    if (!flags)
        goto done;
    contiguous = PyObject_GetAttr(flags, k_c_contiguous);
    if (!contiguous)
        goto done;
    if (contiguous != Py_True) {
        w->bail = 1;
        goto done;
    }
    shape = PyObject_GetAttr(arr, k_shape);
    size = PyObject_GetAttr(arr, k_size);
    if (!shape || !size)
        goto done;
    if (!PyTuple_CheckExact(shape) || !PyLong_CheckExact(size)) {
        w->bail = 1;
        goto done;
    }
    int empty = PyObject_Not(size);
    if (empty < 0)
        goto done;
    result = append_leaf(w, kind, row, shape, empty ? w->empty : arr);
done:
    Py_XDECREF(flags);
    Py_XDECREF(contiguous);
    Py_XDECREF(shape);
    Py_XDECREF(size);
    return result;
}

static PyObject *walk_numpy(Walk *w, PyObject *arr)
{
    PyObject *id = PyLong_FromVoidPtr(arr);
    if (!id)
        return NULL;
    int first = first_sight(w, id); /* the same array twice is sent once: wire/tree.py keeps that bookkeeping */
    Py_DECREF(id);
    if (first <= 0) {
        w->bail = first == 0;
        return NULL;
    }
    PyObject *dtype = PyObject_GetAttr(arr, k_dtype);
    if (!dtype)
        return NULL;
    PyObject *row = PyDict_GetItemWithError(w->numpy_rows, dtype); /* borrowed */
    Py_DECREF(dtype);
    if (!row) {
        w->bail = !PyErr_Occurred();
        return NULL;
    }
    return add_leaf(w, 1, row, arr);
}

/* t.<name>, or t.<name>() when `call`. torch's attributes are getters and methods of its C tensor type:
 * calling those straight spares the generic lookup (for a method, in the tensor's __dict__ first) that
 * costs as much as some of these calls. Anything else goes the usual way. */
static PyObject *tensor_attr(PyObject *t, PyObject *name, int call)
{
    PyObject *descr = _PyType_Lookup(Py_TYPE(t), name); /* borrowed */
    if (descr && call && Py_IS_TYPE(descr, &PyMethodDescr_Type))
        return PyObject_Vectorcall(descr, &t, 1, NULL);
    if (descr && !call && Py_IS_TYPE(descr, &PyGetSetDescr_Type))
        return Py_TYPE(descr)->tp_descr_get(descr, t, (PyObject *)Py_TYPE(t));
    return call ? PyObject_CallMethodNoArgs(t, name) : PyObject_GetAttr(t, name);
}

/* 1 if t.<name> (or t.<name>() when `call`) is True, 0 if it is False, -1 if it raised or is neither. */
static int torch_flag(PyObject *t, PyObject *name, int call)
{
    PyObject *v = tensor_attr(t, name, call);
    if (!v) {
        PyErr_Clear();
        return -1;
    }
    int flag = v == Py_True ? 1 : v == Py_False ? 0 : -1;
    Py_DECREF(v);
    return flag;
}

/* t's shape as a tuple, and in *nbytes its size for elements of `itemsize` bytes; NULL when the
 * shape is not a tuple of non-negative ints whose size fits (no exception set then). */
static PyObject *torch_shape(PyObject *t, Py_ssize_t itemsize, Py_ssize_t *nbytes)
{
    PyObject *size = tensor_attr(t, k_shape, 0); /* torch.Size, a tuple subclass */
    if (!size || !PyTuple_Check(size)) {
        PyErr_Clear();
        Py_XDECREF(size);
        return NULL;
    }
    Py_ssize_t n = itemsize, k, ndim = PyTuple_GET_SIZE(size);
    for (k = 0; k < ndim; k++) {
        PyObject *d = PyTuple_GET_ITEM(size, k);
        Py_ssize_t v = PyLong_Check(d) ? PyLong_AsSsize_t(d) : -1;
        if (v < 0 || (v && n > PY_SSIZE_T_MAX / v)) {
            PyErr_Clear();
            Py_DECREF(size);
            return NULL;
        }
        n *= v;
    }
    PyObject *shape = PyTuple_GetSlice(size, 0, ndim); /* a plain tuple, as numpy's shapes are */
    Py_DECREF(size);
    *nbytes = n;
    return shape;
}

/* A leaf for a torch tensor whose bytes can be read as they are: a dense, contiguous CPU tensor of a
 * dtype numpy has, without the lazy conjugate or negative bit. Those are the checks t.numpy() makes,
 * but for grad, which only matters to autograd: a tensor that needs grad is read the same way. */
static PyObject *walk_torch(Walk *w, PyObject *t)
{
    PyObject *dtype = tensor_attr(t, k_dtype, 0);
    if (!dtype)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(w->torch_rows, dtype); /* borrowed */
    Py_DECREF(dtype);
    if (!found) {
        w->bail = !PyErr_Occurred();
        return NULL;
    }
    if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 3) {
        PyErr_SetString(PyExc_TypeError, "torch_rows must map dtypes to (row, itemsize, is_complex)");
        return NULL;
    }
    int complex = PyObject_IsTrue(PyTuple_GET_ITEM(found, 2));
    if (complex < 0)
        return NULL;
    Py_ssize_t itemsize = PyLong_AsSsize_t(PyTuple_GET_ITEM(found, 1));
    if (itemsize <= 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "itemsize must be positive");
        return NULL;
    }
    PyObject *ptr = tensor_attr(t, k_data_ptr, 1);
    if (!ptr) { /* sparse and other storage-less layouts: wire/tree.py words the error */
        PyErr_Clear();
        w->bail = 1;
        return NULL;
    }
    char *address = PyLong_AsVoidPtr(ptr);
    /* Tied weights share a pointer: wire/tree.py compares layouts. Empty tensors may all have none. */
    int first = address ? first_sight(w, ptr) : PyErr_Occurred() ? -1 : 1;
    Py_DECREF(ptr);
    if (first <= 0) {
        w->bail = first == 0;
        return NULL;
    }
    PyObject *layout = tensor_attr(t, k_layout, 0);
    if (!layout)
        PyErr_Clear();
    /* (torch sets the conjugate bit on complex tensors only) */
    int plain = layout && layout == w->strided && torch_flag(t, k_is_cpu, 0) == 1 &&
                torch_flag(t, k_is_contiguous, 1) == 1 && torch_flag(t, k_is_neg, 1) == 0 &&
                (!complex || torch_flag(t, k_is_conj, 1) == 0);
    Py_XDECREF(layout);
    Py_ssize_t nbytes = 0;
    PyObject *shape = plain ? torch_shape(t, itemsize, &nbytes) : NULL;
    if (!shape || (nbytes && !address)) { /* GPU, sparse, strided, conj/neg views: wire/tree.py's general path */
        Py_XDECREF(shape);
        w->bail = !PyErr_Occurred();
        return NULL;
    }
    PyObject *data = w->empty;
    Py_INCREF(data);
    if (nbytes) {
        TensorBytes *b = PyObject_New(TensorBytes, &TensorBytesType);
        if (!b) {
            Py_DECREF(shape);
            Py_DECREF(data);
            return NULL;
        }
        Py_INCREF(t);
        b->owner = t;
        b->buf = address;
        b->len = nbytes;
        Py_SETREF(data, (PyObject *)b);
    }
    PyObject *ref = append_leaf(w, 2, PyTuple_GET_ITEM(found, 0), shape, data);
    Py_DECREF(shape);
    Py_DECREF(data);
    return ref;
}

static PyObject *walk(Walk *w, PyObject *obj, int depth)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyUnicode_Type || t == &PyFloat_Type || t == &PyBool_Type || t == &PyBytes_Type || obj == Py_None) {
        Py_INCREF(obj);
        return obj;
    }
    if (t == &PyLong_Type) {
        int overflow;
        PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow > 0) {
            PyLong_AsUnsignedLongLong(obj);
            if (PyErr_Occurred()) { /* beyond 64 bits: wire/tree.py's ext type 5 */
                PyErr_Clear();
                w->bail = 1;
                return NULL;
            }
        } else if (overflow < 0 || PyErr_Occurred()) {
            PyErr_Clear();
            w->bail = 1;
            return NULL;
        }
        Py_INCREF(obj);
        return obj;
    }
    if ((PyObject *)t == w->ndarray_type)
        return walk_numpy(w, obj);
    Py_ssize_t k, n = PyTuple_GET_SIZE(w->tensor_types);
    for (k = 0; k < n; k++)
        if ((PyObject *)t == PyTuple_GET_ITEM(w->tensor_types, k))
            return walk_torch(w, obj);
    if (depth >= w->max_depth || (t != &PyDict_Type && t != &PyList_Type)) {
        w->bail = 1; /* too deep, tuples and everything else: wire/tree.py walks it and words any error */
        return NULL;
    }
    if (Py_EnterRecursiveCall(" in tensorcodec._fastwire.plain_walk"))
        return NULL;
    PyObject *out = NULL;
    if (t == &PyDict_Type) {
        out = PyDict_New();
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (out && PyDict_Next(obj, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key)) {
                w->bail = 1;
                Py_CLEAR(out);
                break;
            }
            Py_INCREF(key);
            Py_INCREF(value); /* the walk may run Python code (data_ptr(), is_contiguous()) */
            PyObject *item = walk(w, value, depth + 1);
            if (!item || PyDict_SetItem(out, key, item) < 0)
                Py_CLEAR(out);
            Py_XDECREF(item);
            Py_DECREF(key);
            Py_DECREF(value);
        }
    } else {
        Py_ssize_t size = PyList_GET_SIZE(obj);
        out = PyList_New(0);
        for (k = 0; out && k < size && k < PyList_GET_SIZE(obj); k++) {
            PyObject *value = PyList_GET_ITEM(obj, k);
            Py_INCREF(value);
            PyObject *item = walk(w, value, depth + 1);
            Py_DECREF(value);
            if (!item || PyList_Append(out, item) < 0)
                Py_CLEAR(out);
            Py_XDECREF(item);
        }
        if (out && PyList_GET_SIZE(out) != PyList_GET_SIZE(obj)) { /* the list changed under us */
            w->bail = 1;
            Py_CLEAR(out);
        }
    }
    Py_LeaveRecursiveCall();
    return out;
}

/* plain_walk(obj, max_depth, tables) -> (tree, leaves) or None
 * tables: tree.WalkTables, read by position: (numpy_rows, torch_rows, ndarray_type, tensor_types, leaf_type,
 * ext_type, empty, numpy_refs, torch_refs, strided).
 * tree.flatten's walk for the common trees: dicts (str keys), lists, str, bytes, float, bool, None,
 * 64-bit ints, and C-contiguous numpy arrays / CPU torch tensors of numpy's own dtypes, each
 * object once (a tensor's leaf holds a TensorBytes of it). Anything else (tuples, tied tensors, big ints, subclasses, other dtypes, too deep)
 * gives None, and wire/tree.py walks the tree itself. */
static PyObject *plain_walk(PyObject *self, PyObject *args)
{
    Walk w;
    memset(&w, 0, sizeof w);
    PyObject *obj, *tables;
    if (!PyArg_ParseTuple(args, "OiO!", &obj, &w.max_depth, &PyTuple_Type, &tables))
        return NULL;
    if (!PyArg_ParseTuple(tables, "O!O!OO!O!O!OO!O!O;tables must be a tree.WalkTables", &PyDict_Type, &w.numpy_rows,
                          &PyDict_Type, &w.torch_rows, &w.ndarray_type, &PyTuple_Type, &w.tensor_types, &PyType_Type,
                          &w.leaf_type, &PyType_Type, &w.ext_type, &w.empty, &PyList_Type, &w.numpy_refs, &PyList_Type,
                          &w.torch_refs, &w.strided))
        return NULL;
    if (!PyType_IsSubtype(w.leaf_type, &PyTuple_Type) || !PyType_IsSubtype(w.ext_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "leaf_type and ext_type must be tuple subclasses");
        return NULL;
    }
    w.leaves = PyList_New(0);
    w.seen = PySet_New(NULL);
    if (!w.leaves || !w.seen) {
        Py_XDECREF(w.leaves);
        Py_XDECREF(w.seen);
        return NULL;
    }
    PyObject *tree = walk(&w, obj, 0);
    Py_DECREF(w.seen);
    if (!tree) {
        Py_DECREF(w.leaves);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE; /* w.bail */
    }
    return Py_BuildValue("(NN)", tree, w.leaves);
}

static PyMethodDef methods[] = {
    {"plain_walk", plain_walk, METH_VARARGS, "tree.flatten's walk for common trees, or None (see wire/tree.py)."},
    {"first_nonzero", first_nonzero, METH_VARARGS, "Offset of the first nonzero byte in runs of a buffer, or -1."},
    {"layout", layout, METH_VARARGS, "Validated layout of the raw entries of a tensor table (see wire/header.py)."},
    {"join_into", join_into, METH_VARARGS, "b\"\".join(frames) into a writable buffer; returns the bytes written."},
    {"join_bytes", join_bytes, METH_VARARGS, "b\"\".join(frames) of a known size, placed for huge pages from 2 MiB."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwire", "The wire format's per-tensor loops in C.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastwire(void)
{
    k_dtype = PyUnicode_InternFromString("dtype");
    k_flags = PyUnicode_InternFromString("flags");
    k_c_contiguous = PyUnicode_InternFromString("c_contiguous");
    k_shape = PyUnicode_InternFromString("shape");
    k_size = PyUnicode_InternFromString("size");
    k_data_ptr = PyUnicode_InternFromString("data_ptr");
    k_layout = PyUnicode_InternFromString("layout");
    k_is_cpu = PyUnicode_InternFromString("is_cpu");
    k_is_contiguous = PyUnicode_InternFromString("is_contiguous");
    k_is_neg = PyUnicode_InternFromString("is_neg");
    k_is_conj = PyUnicode_InternFromString("is_conj");
    if (!k_dtype || !k_flags || !k_c_contiguous || !k_shape || !k_size || !k_data_ptr || !k_layout || !k_is_cpu ||
        !k_is_contiguous || !k_is_neg || !k_is_conj)
        return NULL;
#if defined(MADV_HUGEPAGE)
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        page_size = (uintptr_t)page;
    thp_enabled = read_thp_enabled();
#endif
    if (PyType_Ready(&TensorBytesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddObjectRef(m, "TensorBytes", (PyObject *)&TensorBytesType) < 0)
        Py_CLEAR(m);
    return m;
}
