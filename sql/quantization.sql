-- Quantized variants (atlas/quantize.py): how each was quantized, one row per variant key.
-- Written by the store in the transaction of the variant's vector, from its provenance.
CREATE TABLE IF NOT EXISTS quantizations (
    key             VARCHAR PRIMARY KEY,    -- models.key
    method          VARCHAR NOT NULL,       -- torchao | bnb | gptq | awq | gguf …
    bits            INTEGER,
    group_size      INTEGER,                -- NULL: per output channel, or the format's blocks
    qtype           VARCHAR,                -- nf4 / fp4 (bitsandbytes 4-bit), Q4_K_M … (GGUF)
    source_quant    VARCHAR,                -- label of an already-quantized source (GGUF)
    compute_dtype   VARCHAR,                -- what the matrix products run in
    library         VARCHAR,
    library_version VARCHAR
);

-- Variants with their quantization (float variants have NULL method).
CREATE OR REPLACE VIEW quantized_variants AS
SELECT m.key, m.family, m.size, m.seed, m.quant, m.layer, m.checkpoint,
       q.method, q.bits, q.group_size, q.qtype, q.source_quant, q.compute_dtype, q.library,
       q.library_version
FROM model_variants m LEFT JOIN quantizations q USING (key);
