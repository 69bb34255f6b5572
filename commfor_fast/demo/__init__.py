"""Built-in demo data: synthetic "real" sources and "generators" with realistic traces,
written in the Hugging Face dataset's layout and as local folders, for `commfor-fast demo`
and for the tests' fixtures."""
