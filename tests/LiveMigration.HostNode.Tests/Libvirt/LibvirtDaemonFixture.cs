using System.Diagnostics;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Libvirt;

/// <summary>
/// libvirtd for the tests of one run: deploy/libvirt/setup.sh makes sure it runs (installing and configuring it
/// when needed). A daemon this fixture started is stopped by its pid at the end; one that already ran (run.sh
/// starts it before the suite, so parallel test projects share it) is left alone.
/// </summary>
public sealed class LibvirtDaemonFixture : IAsyncLifetime
{
    private int? _startedPid;

    public async Task InitializeAsync()
    {
        var script = Path.Combine(RepositoryRoot(), "deploy", "libvirt", "setup.sh");
        var output = await ProcessRunner.RunCheckedAsync("bash", [script], ErrorCodes.IoError);
        var last = output.Trim().Split('\n')[^1].Split(' ');
        if (last is not ["libvirtd", var state, var pidText] || !int.TryParse(pidText, out var pid))
            throw new InvalidOperationException($"setup.sh ended with '{string.Join(' ', last)}', not 'libvirtd started|running PID'");
        if (state == "started") _startedPid = pid;
    }

    public async Task DisposeAsync()
    {
        if (_startedPid is not { } pid) return;
        try
        {
            using var process = Process.GetProcessById(pid);
            if (process.ProcessName != "libvirtd") return;
            Posix.Terminate(pid);
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (!process.HasExited && DateTime.UtcNow < deadline) await Task.Delay(50);
            if (!process.HasExited) process.Kill();
        }
        catch (ArgumentException) { /* already gone */ }
        catch (InvalidOperationException) { /* already gone */ }
    }

    public static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "LiveMigration.Akka.sln"))) return dir.FullName;
        throw new InvalidOperationException("cannot find LiveMigration.Akka.sln above " + AppContext.BaseDirectory);
    }

    private static class Posix
    {
        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
        private static extern int Kill(int pid, int signal);
        public static void Terminate(int pid) => Kill(pid, 15);
    }
}

[CollectionDefinition(Name)]
public sealed class LibvirtCollection : ICollectionFixture<LibvirtDaemonFixture>
{
    public const string Name = "libvirt";
}
