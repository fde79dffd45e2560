"""Compression techniques and the pipeline that applies them: the light catalog (`catalog.py`, configs in
`configs.py`, model traits in `traits.py`) that the spec, the CRD and the search read, one implementation
module per technique (imported only when applied), and `pipeline.py`. May import spec, io, runtimes, measure."""
