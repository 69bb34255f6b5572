"""commfor-fast: Community Forensics training and evaluation, fed at GPU speed.

Data flows one way: sources -> shards (`convert`) -> pipelines (DALI or the PIL
reference) -> training/evaluation loop -> metrics and reports.
"""

__version__ = "0.1.0"
