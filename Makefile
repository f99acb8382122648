# Convenience targets; the scripts are the source of truth.
.PHONY: bench test

# The benchmark suite: urldisk vs nbdkit, s3backer and raw S3 (see bench/suite.sh).
bench:
	./bench/suite.sh

test:
	./scripts/test.sh
