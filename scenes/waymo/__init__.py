"""Waymo Open Dataset v1 (TFRecord) and v2 (Parquet), read and written without TensorFlow."""
