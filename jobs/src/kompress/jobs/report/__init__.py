"""The run report: the typed models (`model.py`, the contract the operator reads), rendering (json, html,
console, the Job's summary), the plots and the Prometheus series. `model.py` imports only pydantic; the rest
may import it, never the stages that produce the report."""
