SELECT term_months, SUM(amount) / term_months FROM bank.loans GROUP BY term_months
