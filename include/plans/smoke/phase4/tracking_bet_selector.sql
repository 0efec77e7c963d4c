-- Bet selector: active strategy configurations whose live ROI clears 12, best first.
SELECT c.id AS config_id, c.strategy_name, s.roi, s.win_rate, s.sample_size,
       c.config->>'min_confidence' AS min_confidence,
       (c.config->>'stake_units')::int AS stake_units,
       c.updated_at
  FROM {{tracking.active_strategy_configs}} AS c
  JOIN {{tracking.active_high_roi_strategies}} AS s ON s.strategy_name = c.strategy_name
 WHERE c.is_active AND s.roi >= 12
 ORDER BY s.roi DESC, c.id;
