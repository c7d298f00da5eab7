SELECT COUNT(* FROM bank.loans
