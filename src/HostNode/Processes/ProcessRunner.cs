using System.Diagnostics;
using System.Text;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Processes;

public sealed record ProcessResult(int ExitCode, string StandardOutput, string StandardError)
{
    public bool Succeeded => ExitCode == 0;
}

/// <summary>
/// Runs an external program (qemu-img and friends) with an argument list, never a shell string,
/// and collects its output. Cancelling kills the process tree so no writer is left behind.
/// </summary>
public static class ProcessRunner
{
    /// <param name="started">Told the process id once it runs (e.g. to read what it has written from <c>/proc</c>).</param>
    public static async Task<ProcessResult> RunAsync(string program, IEnumerable<string> arguments,
        CancellationToken ct = default, string? workingDirectory = null, Action<int>? started = null)
    {
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? "",
        };
        foreach (var a in arguments) psi.ArgumentList.Add(a);

        using var process = new Process { StartInfo = psi };
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        try
        {
            process.Start();
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot start {program}: {e.Message} (is it installed?)", e);
        }
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            started?.Invoke(process.Id);
            await process.WaitForExitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            try { process.Kill(entireProcessTree: true); }
            catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or AggregateException) { }
            // Reaped before the caller goes on, however long that takes: a killed qemu-img may still be in a write (in the
            // kernel, D state) and holds its image's lock until it is gone, and what waits for the caller (the SPM lease's
            // release) must not go on while it could still write.
            // Waited for by its exit alone: the unbounded wait (WaitForExitAsync, WaitForExit()) also waits for the end of its
            // output, which a process that left the tree (QEMU's -daemonize) may hold open long after.
            try { await Task.Run(() => { while (!process.WaitForExit(TimeSpan.FromSeconds(10))) { } }, CancellationToken.None); }
            catch (InvalidOperationException) { }
            throw;
        }
        process.WaitForExit(); // flushes the asynchronous output readers
        return new ProcessResult(process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs the program and throws <see cref="OperationFailedException"/> with its own message when it fails.</summary>
    public static async Task<string> RunCheckedAsync(string program, IEnumerable<string> arguments, string errorCode,
        CancellationToken ct = default, Action<int>? started = null)
    {
        var args = arguments.ToList();
        var result = await RunAsync(program, args, ct, started: started);
        if (!result.Succeeded)
        {
            var message = (result.StandardError.Trim() is { Length: > 0 } err ? err : result.StandardOutput.Trim());
            throw new OperationFailedException(errorCode,
                $"{program} {string.Join(' ', args.Take(2))}… failed (exit {result.ExitCode}): {message}");
        }
        return result.StandardOutput;
    }
}
