"""Test oracles: independent models the engine is checked against.

* ``reference``: arch/arm64/kvm/hyp/pgtable.c restated in plain Python,
  function by function, under the kernel's names;
* ``arch_translate``: the architecture's stage-2 translation (the MMU's walk,
  faults and FSCs), as nested.c / the Arm ARM define it.

They import nothing from s2fast, so that a bug in s2fast cannot hide in the
oracle too. pytest finds them through ``pythonpath = ["tests"]``."""
