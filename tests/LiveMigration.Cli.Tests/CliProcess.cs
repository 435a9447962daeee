using System.Diagnostics;

namespace LiveMigration.Cli.Tests;

/// <summary>What one run of <c>lsm</c> returned and printed.</summary>
public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the built <c>lsm.dll</c> as an operator would, as a separate process, and kills it by pid if it hangs.</summary>
public static class CliProcess
{
    public static string DllPath
    {
        get
        {
            var configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}") ? "Release" : "Debug";
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "LiveMigration.Akka.sln")))
                    return Path.Combine(dir.FullName, "src", "Cli", "bin", configuration, "net10.0", "lsm.dll");
            throw new InvalidOperationException("cannot find LiveMigration.Akka.sln above " + AppContext.BaseDirectory);
        }
    }

    public static Task<CliResult> RunAsync(string? api, params string[] arguments) => RunAsync(api, onStdoutLine: null, arguments);

    /// <summary>As <see cref="RunAsync(string?, string[])"/>, handing each line of stdout to <paramref name="onStdoutLine"/> as it comes.</summary>
    public static Task<CliResult> RunAsync(string? api, Action<string>? onStdoutLine, params string[] arguments) =>
        RunWithEnvironmentAsync(api, null, onStdoutLine, arguments);

    /// <summary>As <see cref="RunAsync(string?, string[])"/> with extra environment variables (which the nodes a <c>local up</c> starts inherit).</summary>
    public static async Task<CliResult> RunWithEnvironmentAsync(string? api, IReadOnlyDictionary<string, string>? environment,
        Action<string>? onStdoutLine, params string[] arguments)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.ArgumentList.Add(DllPath);
        foreach (var a in arguments) psi.ArgumentList.Add(a);
        psi.Environment.Remove("LSM_API");
        if (api is not null) psi.Environment["LSM_API"] = api;
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) psi.Environment[name] = value;
        using var process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start lsm");
        var stdout = onStdoutLine is null ? process.StandardOutput.ReadToEndAsync() : ReadLinesAsync(process.StandardOutput, onStdoutLine);
        var stderr = process.StandardError.ReadToEndAsync();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        try
        {
            await process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill();
            await process.WaitForExitAsync();
            throw new Xunit.Sdk.XunitException($"lsm {string.Join(' ', arguments)} did not end within 90 s; stdout so far:\n{await stdout}");
        }
        return new CliResult(process.ExitCode, await stdout, await stderr);
    }

    private static async Task<string> ReadLinesAsync(StreamReader reader, Action<string> onLine)
    {
        var text = new System.Text.StringBuilder();
        while (await reader.ReadLineAsync() is { } line)
        {
            text.AppendLine(line);
            onLine(line);
        }
        return text.ToString();
    }
}
