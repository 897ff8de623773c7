"""Torch's binary file format (`torch.save`), read without Torch: the object tree of a .t7 file.

Parsed with the `torchfile` package (pure Python) through a subclass that bounds every read by the
file's size, so a truncated or corrupt file raises instead of reading past its end, and that reads
tensors and storages itself: torchfile's own reader views tensors into storages with no bounds check,
and knows no OpenCL or half-precision types. Which of torchfile's internals the subclass relies on is
written in kerascharrnn.upstream.torchfile_reader. Only numpy and torchfile: no TensorFlow.
"""

from __future__ import annotations

import functools
import mmap
import os
import re
import struct

import numpy as np

from kerascharrnn import upstream
from kerascharrnn.errors import UserError

_CONVERT_HINT = ("convert the checkpoint to float on the machine that wrote it (load it there, call"
                 " model:float() and torch.save it again; train.lua itself saves float checkpoints)")

# Tensor and storage classes whose data torch writes as raw native numbers. cutorch writes a CUDA
# storage as a host copy of its numbers, so a Cuda tensor reads exactly as its CPU twin.
_DTYPES = {"Byte": np.uint8, "Char": np.int8, "Short": np.int16, "Int": np.int32, "Long": np.int64,
           "Float": np.float32, "Double": np.float64, "Cuda": np.float32, "CudaByte": np.uint8,
           "CudaChar": np.int8, "CudaShort": np.int16, "CudaInt": np.int32, "CudaLong": np.int64,
           "CudaDouble": np.float64}
_TENSOR_CLASS = re.compile(rb"torch\.(\w*)(Tensor|Storage)")
_MAX_DIMS = 64


class _Corrupt(Exception):
    """The bytes cannot be a Torch file (or it was cut short)."""


class _Unreadable(Exception):
    """A tensor type whose bytes we cannot interpret (OpenCL, half precision)."""


@functools.lru_cache(maxsize=None)
def _reader_class():
    """torchfile.T7Reader with bounded reads and our own tensor/storage reading (built on first use,
    so that importing this module does not need torchfile)."""
    try:
        reader_base, reader_error, type_torch = upstream.torchfile_reader()
    except ImportError:
        raise UserError("reading torch-rnn .t7 checkpoints needs torchfile, which this install lacks: pip install"
                        " 'kerascharrnn[tf]' (the tools that read them need TensorFlow too)") from None

    class Reader(reader_base):
        def __init__(self, buffer, size: int):
            # Tables stay dicts (use_list_heuristic=False): torchfile's list conversion compares each
            # element with the table and fails for tensors ("invalid __array_struct__"). Strings stay bytes.
            super().__init__(buffer, use_list_heuristic=False, use_int_heuristic=True, utf8_decode_strings=False)
            self.size = size

        def remaining(self) -> int:
            return self.size - self.f.tell()

        def read_exact(self, count: int) -> bytes:
            if not 0 <= count <= self.remaining():
                raise _Corrupt(f"a field of {count} bytes at offset {self.f.tell()} runs past the end of the file")
            return self.f.read(count)

        def _read(self, fmt):
            return struct.unpack(fmt, self.read_exact(struct.calcsize(fmt)))

        def read_long(self):  # torch's long is 8 bytes on 64-bit Linux and macOS
            return self._read("=q")[0]

        def read_long_array(self, n):
            if not 0 <= n <= _MAX_DIMS:
                raise _Corrupt(f"a tensor with {n} dimensions")
            return list(self._read(f"={n}q"))

        def read_string(self, disable_utf8=False):
            return self.read_exact(self.read_int())

        def read_obj(self):
            start = self.f.tell()
            if self.read_int() == type_torch:
                index = self.read_int()
                if index not in self.objects:
                    version = self.read_string()
                    class_name = self.read_string() if version.startswith(b"V ") else version
                    match = _TENSOR_CLASS.fullmatch(class_name)
                    if match:
                        self.objects[index] = None
                        prefix, kind = match.group(1).decode("ascii"), match.group(2)
                        if prefix not in _DTYPES:
                            raise _Unreadable(class_name.decode("ascii"))
                        dtype = np.dtype(_DTYPES[prefix])
                        obj = self.read_storage(dtype) if kind == b"Storage" else self.read_tensor(dtype)
                        self.objects[index] = obj
                        return obj
            self.f.seek(start)
            return super().read_obj()

        def read_storage(self, dtype: np.dtype) -> np.ndarray:
            # torch7 generic/Storage.c: size (long), then the raw numbers
            count = self.read_long()
            if count < 0 or count * dtype.itemsize > self.remaining():
                raise _Corrupt(f"a storage of {count} numbers runs past the end of the file")
            return np.frombuffer(self.read_exact(count * dtype.itemsize), dtype=dtype)

        def read_tensor(self, dtype: np.dtype) -> np.ndarray:
            # torch7 generic/Tensor.c: nDimension (int), size and stride (long each), storageOffset
            # (long, 1-based), then the storage object (nil for an empty tensor)
            ndim = self.read_int()
            size, stride = self.read_long_array(ndim), self.read_long_array(ndim)
            offset = self.read_long() - 1
            storage = self.read_obj()
            if storage is None or ndim == 0:
                return np.empty((0,), dtype)
            if not isinstance(storage, np.ndarray) or storage.dtype != dtype:
                raise _Corrupt(f"a {dtype} tensor over a {type(storage).__name__} storage")
            if min(size) < 0 or min(stride) < 0 or offset < 0:
                raise _Corrupt(f"a tensor of size {size}, stride {stride}, offset {offset + 1}")
            if 0 in size:
                return np.empty(size, dtype)
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= storage.size:
                raise _Corrupt(f"a tensor of size {size} reaches past its storage of {storage.size} numbers")
            if _overlaps(size, stride):  # a stride of 0 repeats numbers: copied, such a view could take any memory
                raise _Corrupt(f"a tensor of size {size}, stride {stride} repeats its storage's numbers")
            return np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                                   strides=[s * dtype.itemsize for s in stride], writeable=False)

    return Reader, reader_error


def _overlaps(size, stride) -> bool:
    """Whether a strided view reaches one number of its storage twice: ordered by stride, each dimension must
    step past everything the smaller ones span."""
    span = 1
    for n, step in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda pair: pair[1]):
        if step < span:
            return True
        span = step * n
    return False


def load(path: str):
    """The object stored in a Torch binary file (tables as dicts, strings as bytes)."""
    reader_class, reader_error = _reader_class()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise UserError(f"{path}: empty file, not a torch-rnn checkpoint")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                try:
                    return reader_class(buffer, size).read_obj()
                except _Unreadable as e:
                    raise UserError(f"{path}: holds {e} tensors, which cannot be read without Torch: "
                                    f"{_CONVERT_HINT}") from None
                except NotImplementedError as e:  # torchfile's half-precision readers
                    raise UserError(f"{path}: {e}: {_CONVERT_HINT}") from None
                except (_Corrupt, reader_error, struct.error, EOFError, ValueError, OverflowError, TypeError,
                        RecursionError) as e:
                    hint = ""
                    if re.match(rb"\s*-?\d+\s", buffer[:32]):
                        hint = " (it looks like torch's ASCII format: save it in the default binary format)"
                    detail = str(e)[:100] if isinstance(e, (_Corrupt, reader_error)) else type(e).__name__
                    raise UserError(f"{path}: not a Torch .t7 file, or truncated or corrupt ({detail}){hint}") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a .t7 checkpoint") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
