"""REC data in TransVG's index format: catalog (names, splits, folders), index (records), transforms, tokenize,
rec (the torch Dataset), synth (the synthetic generator) and check (validation).

Nothing is re-exported here so that `import datasets.errors` (the CLI does it at start-up) stays free of torch
and transformers imports; import from the submodules.
"""
