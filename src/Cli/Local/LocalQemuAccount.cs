using System.Diagnostics;
using LiveMigration.Cli.Api;

namespace LiveMigration.Cli.Local;

/// <summary>
/// QEMU without root for a local cluster: <c>lsm local up</c> run as root makes the unprivileged account QEMU runs as
/// (as installing libvirt makes its <c>qemu</c> user) and checks that this account can reach the data directory and
/// the storage roots, opening a closed folder above them to its group only when that folder is root's group; the QMP
/// hosts then start QEMU as it (<c>--qemu-user</c>). Not root: QEMU runs as the invoking user, who already is not root.
/// </summary>
public static class LocalQemuAccount
{
    public const string Name = "lsm-qemu";

    /// <summary>The account QMP hosts run QEMU as, or null when up does not run as root.</summary>
    public static async Task<string?> PrepareAsync(string dataDirectory, IReadOnlyList<string> storageRoots, Action<string>? report, CancellationToken ct)
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root") return null;
        if ((await RunAsync("getent", ["passwd", Name], ct)).Exit != 0)
        {
            var made = await RunAsync("useradd", ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", Name], ct);
            if (made.Exit != 0 && (await RunAsync("getent", ["passwd", Name], ct)).Exit != 0)
                throw CliFailure.Failed($"cannot make the account {Name} QEMU runs as (useradd: {made.Output.Trim()}); make it with deploy/qemu-user.sh");
            report?.Invoke($"made the account {Name}: QEMU runs as it, not as root");
        }
        foreach (var folder in new[] { dataDirectory }.Concat(storageRoots))
            await OpenPassageAsync(folder, report, ct);
        return Name;
    }

    /// <summary>Lets the account pass through every folder above and at <paramref name="folder"/> that it cannot yet.</summary>
    private static async Task OpenPassageAsync(string folder, Action<string>? report, CancellationToken ct)
    {
        var chain = new List<string>();
        for (var f = Path.GetFullPath(folder); f is not null; f = Path.GetDirectoryName(f)) chain.Add(f);
        var closed = await RunAsync("setpriv",
        [
            "--reuid", Name, "--regid", Name, "--clear-groups", "--", "/bin/sh", "-c", "for d; do [ -x \"$d\" ] || echo \"$d\"; done", "sh", .. chain,
        ], ct);
        foreach (var blocked in closed.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Reverse())
        {
            var group = (await RunAsync("stat", ["-c", "%g", blocked], ct)).Output.Trim();
            if (group != "0")
                throw CliFailure.BadUsage($"QEMU's account {Name} cannot pass through {blocked} (group {group}, not root's, so lsm leaves it alone): " +
                                          $"open it with chmod o+x {blocked}, or choose a folder it can reach");
            if ((await RunAsync("chgrp", [Name, blocked], ct)).Exit != 0 || (await RunAsync("chmod", ["g+x", blocked], ct)).Exit != 0)
                throw CliFailure.Failed($"cannot let QEMU's account {Name} pass through {blocked}");
            report?.Invoke($"{blocked}: group {Name} may now pass through it (QEMU runs as {Name} and opens the volumes below)");
        }
    }

    private static async Task<(int Exit, string Output)> RunAsync(string program, IReadOnlyList<string> arguments, CancellationToken ct)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments) start.ArgumentList.Add(argument);
        using var process = Process.Start(start) ?? throw CliFailure.Failed($"cannot start {program}");
        var output = process.StandardOutput.ReadToEndAsync(ct);
        var error = process.StandardError.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        return (process.ExitCode, await output + await error);
    }
}
