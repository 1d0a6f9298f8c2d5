-- sql/install/09_outcome_views.sql: outcome views (order outcomes, recovery statistics).
/* ------------------------------------------------------- outcome views */

CREATE VIEW flexfactor.order_outcomes AS
SELECT o.id, o.order_id, o.order_session_key, o.source, o.status, o.amount_cents, o.currency,
       o.refunded_cents, o.confirmation_id, o.chargeback_at, o.expiry_date_utc,
       o.created_at, o.status_changed_at,
       (SELECT count(*) FROM flexfactor.webhook_events w
         WHERE w.order_session_key = o.order_session_key) AS webhook_events
  FROM flexfactor.orders o;
COMMENT ON VIEW flexfactor.order_outcomes IS 'Each order with its outcome and how many webhooks it received';

CREATE VIEW flexfactor.recovery_stats AS
SELECT date_trunc('day', created_at)::date AS day,
       currency,
       count(*) AS submitted,
       count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')) AS approved,
       count(*) FILTER (WHERE status IN ('DECLINED', 'REJECTED')) AS declined,
       count(*) FILTER (WHERE status = 'EXPIRED') AS expired,
       count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
       count(*) FILTER (WHERE status = 'REFUNDED') AS refunded,
       count(*) FILTER (WHERE flexfactor.ff_status_rank(status) < 10) AS pending,
       round(100.0 * count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED'))
             / nullif(count(*) FILTER (WHERE flexfactor.ff_status_rank(status) >= 10), 0), 1)
           AS recovery_rate_pct,
       round(100.0 * coalesce(sum(amount_cents - refunded_cents) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')), 0)
             / nullif(sum(amount_cents) FILTER (WHERE flexfactor.ff_status_rank(status) >= 10), 0), 1)
           AS recovery_value_pct,
       coalesce(sum(amount_cents), 0) AS submitted_cents,
       coalesce(sum(amount_cents - refunded_cents) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')), 0)
           AS recovered_cents
  FROM flexfactor.orders
 GROUP BY 1, 2;
COMMENT ON VIEW flexfactor.recovery_stats IS
    'Per day and currency: orders submitted, approved (rescued), declined (refused by FlexFactor: DECLINED or a REJECTED line), expired (rescue window closed), cancelled, refunded, still pending; recovery by count (approved / decided) and by value (recovered / amount decided), amount submitted and recovered net of refunds';

