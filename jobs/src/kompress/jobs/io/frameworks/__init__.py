"""Models from other frameworks (Keras, TensorFlow SavedModel, scikit-learn), converted to ONNX once on load by
the framework's own converter and kept loaded, so the conversion's fidelity is measured against the original
framework's outputs and a TFLite export can start from the original. One module per framework, each
registering itself in `registry`."""
