"""Share a trained model beyond this package: a standard Gemma2 directory, a GGUF file, hub-ready files."""
