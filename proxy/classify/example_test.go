package classify_test

import (
	"fmt"

	"github.com/pgsidecar/pgsidecar/proxy/classify"
)

func ExampleClassify() {
	replayed := func(param string) bool {
		return param == "search_path" || param == "timezone" || param == "application_name"
	}

	res := classify.Classify("SET search_path TO app; SELECT 'LISTEN x' -- listen y", replayed)
	fmt.Printf("%d statements, pin %q, sets tracked %v\n", res.Statements, res.Pin, res.SetsTracked)

	res = classify.Classify("select pg_advisory_lock(42)", replayed)
	fmt.Printf("pin %q\n", res.Pin)

	res = classify.Classify("SET work_mem = '64MB'", replayed)
	fmt.Printf("pin %q\n", res.Pin)

	res = classify.Classify(`DEALLOCATE Stmt1; DEALLOCATE PREPARE "Stmt2"`, replayed)
	fmt.Printf("deallocate %q\n", res.Deallocate)
	// Output:
	// 2 statements, pin "", sets tracked true
	// pin "advisory_lock"
	// pin "set_untracked"
	// deallocate ["stmt1" "Stmt2"]
}
