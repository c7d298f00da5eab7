SELECT COUNT(*) FROM bank.loans JOIN insurer.policies USING (premium)
