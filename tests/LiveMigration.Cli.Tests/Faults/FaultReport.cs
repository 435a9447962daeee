using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LiveMigration.Cli.Tests.Faults;

/// <summary>
/// The fault matrix's report (issue "The fault matrix"): every case run by any matrix test class appends one line to
/// <c>var/faults/cases.jsonl</c>; <c>report.json</c> (with the saga simulation's summary) and the table
/// <c>report.txt</c> are rewritten from it each time. The test classes of the matrix share one xunit collection,
/// so appends never race.
/// </summary>
public static class FaultReport
{
    public static string Folder
    {
        get
        {
            var root = AppContext.BaseDirectory;
            while (root is not null && !File.Exists(Path.Combine(root, "LiveMigration.Akka.sln"))) root = Path.GetDirectoryName(root);
            return Path.Combine(root ?? Path.GetTempPath(), "var", "faults");
        }
    }

    /// <summary>Adds one case: at least strategy, adapter, fault, point, finalStatus, writesChecked, writesLost,
    /// leftoverVolumes, illegalVolumes, vmRunningOn, restartable, seconds.</summary>
    public static async Task AppendAsync(JsonObject line)
    {
        var folder = Folder;
        Directory.CreateDirectory(folder);
        var cases = Path.Combine(folder, "cases.jsonl");
        await File.AppendAllTextAsync(cases, line.ToJsonString() + "\n");
        var report = new JsonObject
        {
            ["cases"] = new JsonArray((await File.ReadAllLinesAsync(cases)).Where(l => l.Length > 0).Select(l => JsonNode.Parse(l)).ToArray()),
        };
        var simulation = Path.Combine(folder, "simulation.json");
        if (File.Exists(simulation)) report["simulation"] = JsonNode.Parse(await File.ReadAllTextAsync(simulation));
        await File.WriteAllTextAsync(Path.Combine(folder, "report.json"), report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        const string format = "{0,-10} {1,-8} {2,-26} {3,-42} {4,-24} {5,8} {6,5} {7,9} {8,8} {9,12} {10,6:0.0}";
        var rows = report["cases"]!.AsArray().Select(c => string.Format(CultureInfo.InvariantCulture, format,
            c!["strategy"], c["adapter"], c["fault"], c["point"], c["finalStatus"], c["writesChecked"], c["writesLost"],
            c["leftoverVolumes"], c["illegalVolumes"], c["restartable"], (double)c["seconds"]!));
        var header = string.Format(CultureInfo.InvariantCulture, format.Replace(":0.0", ""),
            "strategy", "adapter", "fault", "point", "final status", "checked", "lost", "leftovers", "illegal", "restartable", "s");
        await File.WriteAllLinesAsync(Path.Combine(folder, "report.txt"), [header, .. rows]);
    }
}
