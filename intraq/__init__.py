"""intraq-bench: re-create the IntraQ (CVPR 2022) supplementary tables, honestly measured.

Pipeline: data -> teacher -> synthesis -> quantize -> fine-tune -> evaluate -> results -> report.
"""

__version__ = "0.1.0"
