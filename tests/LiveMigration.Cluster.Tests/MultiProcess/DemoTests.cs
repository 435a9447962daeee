using System.Diagnostics;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Tests.MultiProcess;

/// <summary>
/// The README's first command, <c>./run.sh demo</c>, as a newcomer runs it: the built demo program (the same dll run.sh
/// starts) moves a running VM's disk there and back through a local cluster while its guest writes, and must say
/// "nothing lost" with exit 0, and leave no process of its cluster behind. A broken demo once passed CI because no
/// test ran it (its final stop threw after the verification).
/// </summary>
[Collection(MultiProcessCollection.Name)]
public sealed class DemoTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(4);
    private readonly string _dataDirectory = Path.Combine("/tmp", $"lsm-demo-{Guid.NewGuid().ToString("N")[..8]}");

    /// <summary>src/Demo/bin/{configuration}/net10.0/LiveMigration.Demo.dll, as <c>./run.sh demo</c> runs it.</summary>
    private static string DemoDll
    {
        get
        {
            var configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}") ? "Release" : "Debug";
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "LiveMigration.Akka.sln")))
                    return Path.Combine(dir.FullName, "src", "Demo", "bin", configuration, "net10.0", "LiveMigration.Demo.dll");
            throw new InvalidOperationException("cannot find LiveMigration.Akka.sln above " + AppContext.BaseDirectory);
        }
    }

    [Fact]
    public async Task The_demo_moves_the_running_vms_disk_there_and_back_and_says_nothing_was_lost()
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { DemoDll, "--data-dir", _dataDirectory }) psi.ArgumentList.Add(a);
        using var demo = Process.Start(psi) ?? throw new InvalidOperationException("cannot start the demo");
        var stdout = demo.StandardOutput.ReadToEndAsync();
        var stderr = demo.StandardError.ReadToEndAsync();
        using (var limit = new CancellationTokenSource(Limit))
        {
            try
            {
                await demo.WaitForExitAsync(limit.Token);
            }
            catch (OperationCanceledException)
            {
                demo.Kill(entireProcessTree: true);
                await demo.WaitForExitAsync();
                StopLeftovers();
                throw new Xunit.Sdk.XunitException($"the demo did not end within {Limit.TotalMinutes} min:\n{await stdout}\n{await stderr}");
            }
        }
        var text = await stdout;
        output.WriteLine(text);
        output.WriteLine(await stderr);

        Assert.True(demo.ExitCode == 0, $"the demo exited {demo.ExitCode}");
        Assert.Contains("demo: OK, nothing lost", text);
        Assert.Contains("verification through NBD: OK", text);
        Assert.Contains("leftovers: 0 ILLEGAL volumes", text);
        // Both strategies ran to completed (each "completed in N ms" line of the summary).
        var completed = text.Split('\n').Count(line => line.TrimStart().StartsWith("completed in ", StringComparison.Ordinal));
        Assert.True(completed >= 2, $"expected both moves to say 'completed in', saw {completed}");
        var left = ProcessesOfDataDirectory();
        Assert.True(left.Count == 0, "left running after the demo: " + string.Join("; ", left.Select(p => $"{p.Pid} {p.CommandLine}")));
    }

    /// <summary>Every process whose command line names this demo's data directory (its nodes, its QEMU).</summary>
    private List<(int Pid, string CommandLine)> ProcessesOfDataDirectory()
    {
        var found = new List<(int, string)>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            string commandLine;
            try
            {
                commandLine = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
            }
            catch (IOException)
            {
                continue; // it ended while we looked
            }
            catch (UnauthorizedAccessException)
            {
                continue;
            }
            if (commandLine.Contains(_dataDirectory, StringComparison.Ordinal)) found.Add((pid, commandLine.Trim()));
        }
        return found;
    }

    private void StopLeftovers()
    {
        foreach (var (pid, _) in ProcessesOfDataDirectory())
        {
            try
            {
                Process.GetProcessById(pid).Kill(entireProcessTree: true);
            }
            catch (ArgumentException)
            {
            }
            catch (InvalidOperationException)
            {
            }
        }
    }

    public void Dispose()
    {
        StopLeftovers();
        if (Directory.Exists(_dataDirectory)) Directory.Delete(_dataDirectory, recursive: true);
    }
}
