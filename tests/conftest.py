import pathlib
import sys

# The reference walker and the conformance driver live beside the tests.
sys.path.insert(0, str(pathlib.Path(__file__).parent))
