"""Evaluation: `furnace evaluate` (`evaluate`), its metrics, the peer baselines (`baselines`,
`two_stream_peer`) and the HTML reports (`report_eval`, `report_sim`)."""
