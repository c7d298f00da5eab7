SELECT COUNT(*) FROM bank.loans JOIN insurer.policies USING (customer_id)
