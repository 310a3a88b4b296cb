-- The field's own data (atlas/modelmap.py): a published release of hub models with their
-- lineage, the views derived from a model set (the reference's clipping), and per-model metrics
-- (benchmark scores, imported or derived) with what the atlas predicts from the vectors.
--
--   views                 (sql/views.sql, applied first) the derived views of a text set
--   hub_models            one row per variant imported from a hub release: its hub metadata
--   model_lineage         (key, relation, base_source, base_key): every base_model tag
--   model_metrics         view (key, metric, value, source), joinable with nearest(), kl() …
--   metric_predictions    out-of-fold and missing-metric predictions of `atlas predict`

-- What a hub release says of a variant beyond its key (written with its vector).
CREATE TABLE IF NOT EXISTS hub_models (
    key          VARCHAR PRIMARY KEY,         -- a models.key
    hub_id       VARCHAR NOT NULL,            -- ORG/NAME as on the hub (= models.source)
    model_type   VARCHAR,
    model_size   DOUBLE,                      -- billions of parameters, as published
    created_at   VARCHAR,
    downloads    BIGINT,
    tags         VARCHAR[],
    figure_type  VARCHAR,                     -- the release's modeltype_fig1
    figure_color DOUBLE[],                    -- its colour (RGB[A] in 0..1)
    table_type   VARCHAR,                     -- its modeltype_table7
    release_file VARCHAR                      -- the file the vector came from
);

-- Every base_model tag of a hub model: relation finetune | merge | adapter | quantized | base
-- (a plain base_model: tag). base_key is the atlas key of the base when it is stored.
CREATE TABLE IF NOT EXISTS model_lineage (
    key         VARCHAR NOT NULL,
    relation    VARCHAR NOT NULL,
    base_source VARCHAR NOT NULL,
    base_key    VARCHAR,
    PRIMARY KEY (key, relation, base_source)
);

CREATE TABLE IF NOT EXISTS metric_values (
    key         VARCHAR NOT NULL,             -- a models.key
    metric      VARCHAR NOT NULL,             -- e.g. MMLU, loss/Pile-CC
    value       DOUBLE  NOT NULL,
    source      VARCHAR NOT NULL,             -- open-llm-leaderboard-v1, a file name, atlas-…
    imported_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (key, metric, source)
);

CREATE OR REPLACE VIEW model_metrics AS
SELECT key, metric, value, source FROM metric_values;

-- Predictions of `atlas predict METRIC` (replaced per metric): out_of_fold for models that have
-- the metric (cross-validated), else a prediction from the model fitted on all of them.
CREATE TABLE IF NOT EXISTS metric_predictions (
    metric      VARCHAR NOT NULL,
    key         VARCHAR NOT NULL,
    predicted   DOUBLE  NOT NULL,
    observed    DOUBLE,
    out_of_fold BOOLEAN NOT NULL,
    textset     VARCHAR NOT NULL,
    model_where VARCHAR,
    alpha       DOUBLE  NOT NULL,             -- of the fit on all models with the metric
    r2          DOUBLE  NOT NULL,             -- cross-validated
    created_at  TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (metric, key)
);
