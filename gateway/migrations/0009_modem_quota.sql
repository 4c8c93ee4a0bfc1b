-- Parts each GSM modem's SIM sent per local day (dispatcher.timezone), so that a restart
-- does not give a SIM its daily quota back. Keyed by the modem's configured name.
CREATE TABLE modem_quota (
    modem text NOT NULL,
    day date NOT NULL,
    sent integer NOT NULL DEFAULT 0 CHECK (sent >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (modem, day)
);
