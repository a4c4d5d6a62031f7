"""The data wing: how source files become model inputs, one module per step, in the order the
data flows. Each module imports only the ones above it (and the core below: records, storage):

    image        the image contract: which files can be images, and what a model input is
    fingerprints what makes two files the same photograph (exact and perceptual)
    shards       the shard format, and this worker's verified copies of the shards
    listing      one listing of the source: what the data is, without downloading it
    preparation  new files checked, decoded, resized and fingerprinted once, into shards
    duplicates   which usable images are the same photograph, without comparing every pair
    validation   the verdicts turned into the decision to train or stop
    splits       the stable train / validation / test split
    inputs       the input function: a subset as batches of model inputs
    local        the whole path in one process, without Prefect
"""
