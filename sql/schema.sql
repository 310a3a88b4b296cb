-- LM Atlas storage schema. Applied by atlas.store on every open (idempotent) and persisted in
-- the .duckdb file. Raw log-likelihoods are the source of truth; everything else is derived.

CREATE TABLE IF NOT EXISTS atlas_meta (
    name  VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS textset_ids START 1;

-- A text set is its content: content_hash covers the texts in order, nothing else.
CREATE TABLE IF NOT EXISTS textsets (
    textset_id   INTEGER PRIMARY KEY DEFAULT nextval('textset_ids'),
    name         VARCHAR NOT NULL UNIQUE,
    content_hash VARCHAR NOT NULL UNIQUE,
    n_texts      INTEGER NOT NULL,
    mean_bytes   DOUBLE  NOT NULL,          -- B̄, the bits/byte scale
    source       VARCHAR,
    created_at   TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS texts (
    textset_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,            -- 0-based position: the order of every vector
    text       VARCHAR NOT NULL,
    n_bytes    INTEGER NOT NULL,
    domain     VARCHAR,                     -- e.g. the Pile's pile_set_name
    meta       JSON,
    PRIMARY KEY (textset_id, idx)
);

-- One row per model variant; key is the canonical string of atlas.keys.
CREATE TABLE IF NOT EXISTS models (
    key        VARCHAR PRIMARY KEY,
    family     VARCHAR NOT NULL,
    size       VARCHAR NOT NULL,
    n_params   BIGINT,
    seed       INTEGER,
    quant      VARCHAR,
    layer      INTEGER,
    checkpoint VARCHAR,
    step       BIGINT,
    parent     VARCHAR,                     -- key of the base model of a fine-tune
    source     VARCHAR,                     -- hub id, local path or file it was loaded from
    revision   VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- One complete vector per (variant, text set), written in one transaction with its sketch:
-- its row here, ℓ in vector_parts (the view `vectors` joins them back). The raw float32 ℓ is the
-- only full copy (the centred vector is derived where needed: a DOUBLE copy made the file 4.8×
-- the raw size). sketch/sketch_resid make `nearest` sublinear: sketch is B(c − μ) for the text
-- set's PCA basis B (vector_bases; NULL until the set has one), so
-- ‖s_a − s_b‖² + (r_a − r_b)² ≤ ‖c_a − c_b‖² with r = ‖(I − BᵀB)(c − μ)‖, c = ℓ − mean(ℓ);
-- resid_sketch is R(I − BᵀB)(c − μ) for the set's random signs R, which tightens that bound
-- with a stated chance of failure (atlas.sketches; NULL for sets of few texts).
CREATE SEQUENCE IF NOT EXISTS vector_ids START 1;

CREATE TABLE IF NOT EXISTS vector_rows (
    vid            BIGINT   NOT NULL,       -- its parts in vector_parts (vector_ids; new per write)
    key            VARCHAR  NOT NULL,
    textset_id     INTEGER  NOT NULL,
    loglik_mean    DOUBLE   NOT NULL,       -- of the stored float32 ℓ
    n_tokens       INTEGER[],
    total_tokens   BIGINT,
    n_truncated    INTEGER,
    config_id      VARCHAR NOT NULL,        -- hash of what makes two scorings the same
    provenance     JSON NOT NULL,           -- tokenizer, special tokens, dtype, max length, versions
    scored_at      TIMESTAMP DEFAULT current_timestamp,
    sketch         FLOAT[{{SKETCH_DIM}}],               -- B(c − μ): PCA coordinates (NULL: no basis yet)
    sketch_resid   DOUBLE,                  -- r = ‖(I − BᵀB)(c − μ)‖, what the sketch leaves out
    resid_sketch   FLOAT[{{RESID_DIM}}],              -- R(I − BᵀB)(c − μ): the residual's projection
    PRIMARY KEY (key, textset_id)
);
ALTER TABLE vector_rows ADD COLUMN IF NOT EXISTS resid_sketch FLOAT[{{RESID_DIM}}];  -- schema 3

-- ℓ in nats, text-set order, in fixed-size parts: values part·256 … part·256 + 255, the last part
-- padded with zeros. A fixed-size array row is read on its own, so `nearest` fetches its few
-- candidates' parts; one variable-length list per vector was read a whole 2,048-row vector at a
-- time (20 ms a fetch at 10,000 texts), and a FLOAT[N] per vector caps N at DuckDB's 100,000.
CREATE TABLE IF NOT EXISTS vector_parts (
    vid    BIGINT     NOT NULL,
    part   INTEGER    NOT NULL,
    loglik FLOAT[{{LOGLIK_PART}}] NOT NULL
);

-- The sketch basis of a text set: the top principal directions of its centred vectors, fitted
-- once when the set first holds enough vectors (atlas.store.BASIS_MIN). Rows of basis are
-- orthonormal, so every sketch distance is a lower bound of the true one, whatever the fit.
CREATE TABLE IF NOT EXISTS vector_bases (
    textset_id INTEGER PRIMARY KEY,
    dim        INTEGER NOT NULL,
    n_fit      INTEGER NOT NULL,            -- vectors the basis was fitted on
    mean       DOUBLE[] NOT NULL,           -- μ, N values
    basis      FLOAT[]  NOT NULL,           -- B, dim × N values, row-major
    created_at TIMESTAMP DEFAULT current_timestamp,
    resid_projection FLOAT[]                -- R, RESID_DIM × N signs ±1/√RESID_DIM (or NULL)
);
ALTER TABLE vector_bases ADD COLUMN IF NOT EXISTS resid_projection FLOAT[];  -- schema 3

CREATE TABLE IF NOT EXISTS ingest_runs (
    run_id      VARCHAR PRIMARY KEY,
    key         VARCHAR NOT NULL,
    textset     VARCHAR NOT NULL,
    source      VARCHAR,
    status      VARCHAR NOT NULL,           -- running | done | failed | skipped
    error       VARCHAR,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    seconds     DOUBLE,
    tokens      BIGINT
);

-- One weight sketch per variant (atlas.weights): a fixed random projection of all parameters, so
-- ‖S(a) − S(b)‖² estimates ‖W_a − W_b‖² (method.md §5). Two sketches compare only when method,
-- dim, seed and layout_hash (parameter names and shapes) are equal.
CREATE TABLE IF NOT EXISTS weight_sketches (
    key         VARCHAR PRIMARY KEY,        -- a models.key
    method      VARCHAR  NOT NULL,          -- the projection scheme, e.g. countsketch-philox4x64-v1
    dim         INTEGER  NOT NULL,
    seed        BIGINT   NOT NULL,
    layout_hash VARCHAR  NOT NULL,
    n_params    BIGINT   NOT NULL,
    sq_norm     DOUBLE   NOT NULL,          -- exact ‖W‖²
    sketch      DOUBLE[] NOT NULL,          -- S(W), dim values
    created_at  TIMESTAMP DEFAULT current_timestamp
);
