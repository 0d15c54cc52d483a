# Two entry points for a fresh machine (Python >= 3.11, make, bash):
#   make run    create .venv, install, run a short real 4-agent ODMAR training, print the summary, plot it
#   make test   create .venv, install, run the whole test suite (serial tests, then MPI tests at 2 and 4 ranks)
#   make test-slurm  the launch/ scripts on a real one-node Slurm: as root, installs Debian's slurm-wlm and munge
#               when missing, starts its own daemons and stops them (skips where it cannot; 3 to 4 minutes)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
RANKS ?= 4
# A hung MPI test must not hang CI: the suite's last resort (the code's own deadlines fire first).
MPI_TEST_TIMEOUT ?= 900
# On SIGTERM the real-Slurm test stops its own cluster; a watchdog does so should pytest be killed outright.
SLURM_TEST_TIMEOUT ?= 1800

.PHONY: install flatland run test test-serial test-mpi test-slurm clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plot,mpe,smax]'
	$(MAKE) flatland
	touch $@

install: $(VENV)/.installed

# flatland-rl 4.3.0 (env.world = "flatland"): its metadata pins numpy<2, but it runs on numpy 2, so it comes
# without its dependencies, then the ones RailEnv needs (its sdist compiles Cython: a C compiler is needed).
flatland:
	$(PY) -m pip install --quiet --no-deps flatland-rl==4.3.0
	$(PY) -m pip install --quiet msgpack msgpack-numpy attrs fastenum importlib_resources matplotlib networkx

run: install
	$(MPIEXEC) -n $(RANKS) $(PY) -m odmar_mpi.run --config configs/quick.toml

test: test-serial test-mpi

test-serial: install
	$(PY) -m pytest -q -m 'not mpi and not slurm' tests

test-mpi: install
	timeout $(MPI_TEST_TIMEOUT) $(MPIEXEC) -n 2 $(PY) -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests
	timeout $(MPI_TEST_TIMEOUT) $(MPIEXEC) -n 4 $(PY) -m pytest -q -p no:cacheprovider --with-mpi -m mpi tests

test-slurm: install
	timeout --kill-after=120 $(SLURM_TEST_TIMEOUT) $(PY) -m pytest -q -rP -p no:cacheprovider -m slurm tests/test_slurm.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
