"""`make bench`: measurements on real pretrained models; writes docs/benchmarks.md, docs/img/*.png and the
digits table of docs/passes.md (`passes_table`), each with the machine and date it was measured on."""
