"""The guard both TensorFlow test files start with: Keras on its TensorFlow backend, or the module is skipped."""

import os

import pytest


def require_keras_on_tensorflow():
    """(tensorflow, keras), with Keras on TensorFlow; skips the calling test module where that cannot be had."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs another backend in this process; these tests use TensorFlow", allow_module_level=True)
    return tf, keras
