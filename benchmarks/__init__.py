"""`make bench`: measurements on real pretrained models; writes docs/benchmarks.md and docs/img/*.png."""
