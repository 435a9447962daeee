using System.Diagnostics;
using LiveMigration.Cli.Local;

namespace LiveMigration.Cli.Tests;

public sealed class ProcessTableTests
{
    [Fact]
    public async Task Cpu_time_grows_while_a_process_computes_and_is_null_once_it_is_gone()
    {
        // A shell that spins for about half a second of CPU, then waits to be killed.
        using var spinner = Process.Start(new ProcessStartInfo("/bin/sh", ["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 30"])
            { UseShellExecute = false })!;
        try
        {
            var first = ProcessTable.CpuTime(spinner.Id);
            Assert.NotNull(first);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            TimeSpan? later = first;
            while (later <= first + TimeSpan.FromMilliseconds(100) && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
                later = ProcessTable.CpuTime(spinner.Id);
            }
            Assert.True(later > first + TimeSpan.FromMilliseconds(100), $"CPU time went from {first} to {later} while the shell counted");
        }
        finally
        {
            spinner.Kill();
            await spinner.WaitForExitAsync();
        }
        Assert.Null(ProcessTable.CpuTime(spinner.Id));
    }
}
