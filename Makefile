.PHONY: compile debug test testinstalled bench clean

compile:
	python setup.py build_ext --inplace

debug:
	SELPROXY_DEBUG=1 python setup.py build_ext --inplace --force

test: compile
	pytest

testinstalled:
	pip install --force-reinstall --no-deps . && cd /tmp && pytest --rootdir $(CURDIR) $(CURDIR)/tests

bench:
	python benchmarks/bench_passthrough.py
	python benchmarks/bench_search.py

clean:
	rm -rf build dist *.egg-info selproxy/*.c selproxy/*.so selproxy/*.html
