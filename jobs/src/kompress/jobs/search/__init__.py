"""The search over candidate recipes: built-in candidates from the technique catalog and the runtimes, the
`Search` that runs, measures, gates and repairs trials, and the fallback's sensitivity analysis. May import
everything below it (spec, io, runtimes, measure, techniques, gates, report.model); never the runner."""
