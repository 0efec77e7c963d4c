-- Validation summary (the validation service's header): validations, passes, strategies.
SELECT count(*) AS validations,
       count(*) FILTER (WHERE v.validated) AS passed,
       count(DISTINCT v.strategy_name) AS strategies,
       max(v.validated_at) AS last_validated
  FROM {{validation.strategy_records}} AS v;
