-- Calibration of the KL scale (atlas/calibration.py, `atlas calibrate`): what the estimator's
-- bits/byte mean against a Monte-Carlo KL, and under which KL a number means nothing.

-- One Monte-Carlo measurement of KL between two variants, both directions, beside the estimate.
CREATE TABLE IF NOT EXISTS calibrations (
    key_a           VARCHAR NOT NULL,       -- models.key
    key_b           VARCHAR NOT NULL,
    method          VARCHAR NOT NULL,       -- rao-blackwell (same tokenizer) | sequence
    samples         INTEGER NOT NULL,
    length          INTEGER NOT NULL,       -- tokens sampled per sequence
    prompts         VARCHAR,                -- text set whose texts' first tokens start samples
    seed            BIGINT  NOT NULL,
    mc_ab_nats      DOUBLE  NOT NULL,       -- KL(a‖b) on samples of a, nats/token
    mc_ab_se        DOUBLE  NOT NULL,
    mc_ab_bpb       DOUBLE  NOT NULL,       -- the same over the samples' UTF-8 bytes
    mc_ab_se_bpb    DOUBLE  NOT NULL,
    mc_ba_nats      DOUBLE  NOT NULL,       -- KL(b‖a) on samples of b
    mc_ba_se        DOUBLE  NOT NULL,
    mc_ba_bpb       DOUBLE  NOT NULL,
    mc_ba_se_bpb    DOUBLE  NOT NULL,
    estimator_bpb   DOUBLE,                 -- Var(ℓ_a − ℓ_b) / (2 B̄ ln 2) on textset
    estimator_se    DOUBLE,
    textset         VARCHAR,
    ratio           DOUBLE,                 -- estimator / mean(mc_ab_bpb, mc_ba_bpb)
    device          VARCHAR NOT NULL,
    dtype           VARCHAR NOT NULL,
    seconds         DOUBLE,
    versions        JSON NOT NULL,          -- torch, transformers, lm_atlas
    created_at      TIMESTAMP DEFAULT current_timestamp
);

-- The precision floor of a model: KL between its vector scored in float32 and in a lower
-- precision (the same text set, the ordinary scorer). A KL within a few floors of a vector
-- scored in that dtype cannot be told from rounding.
CREATE TABLE IF NOT EXISTS precision_floors (
    key             VARCHAR NOT NULL,       -- models.key
    dtype           VARCHAR NOT NULL,       -- bfloat16 | float16 (against float32)
    textset         VARCHAR NOT NULL,
    kl_bpb          DOUBLE  NOT NULL,
    se              DOUBLE  NOT NULL,
    batch_kl_bpb    DOUBLE  NOT NULL,       -- float32 at batch_size vs float32 at 8 (or 1)
    device          VARCHAR NOT NULL,
    batch_size      INTEGER NOT NULL,
    versions        JSON NOT NULL,
    created_at      TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (key, dtype)
);
