using System.Text.Json;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Qmp;

/// <summary>
/// How chain layers become QEMU block nodes: names derived from the volume (the domain is part of the
/// name because a pre-copy destination leaf has the same volume id as its source), and the options
/// each node is added — and reopened — with.
/// </summary>
internal static class BlockNodes
{
    // Node names must start with a letter and stay under 32 characters.
    private static string Key(VolumeRef volume) =>
        volume.Domain.Value.ToString("N")[..8] + volume.Volume.Value.ToString("N")[..12];

    public static string FormatNode(ChainLayer layer) => "n" + Key(layer.Volume);
    public static string FileNode(ChainLayer layer) => "f" + Key(layer.Volume);

    /// <summary>The export's QMP id (QMP ids must start with a letter; a UUID may not). Its NBD name is the image id.</summary>
    public static string ExportId(ImageId drive) => "export-" + drive.Value.ToString("N");

    public static string MirrorJobId(ImageId drive) => "mirror-" + drive.Value.ToString("N")[..12];
    /// <summary>The empty stream job that writes a leaf's backing format into its header (see QmpHypervisor's backing switch).</summary>
    public static string HeaderJobId(ImageId drive) => "header-" + drive.Value.ToString("N")[..12];

    public static Dictionary<string, object?> FileNodeOptions(ChainLayer layer, bool readOnly) => new()
    {
        ["driver"] = "file",
        ["node-name"] = FileNode(layer),
        ["filename"] = layer.Path,
        ["read-only"] = readOnly,
        // Zero writes may punch holes: a mirror of a single raw volume (QEMU turns sync=top without a backing into a full
        // copy) writes the source's holes as zeroes, and without unmap they allocate the whole twin.
        ["discard"] = "unmap",
    };

    /// <summary>
    /// The format node's options. The backing is always explicit for qcow2 (a node name, or null for none),
    /// so QEMU never opens a backing file on its own from the header. <c>blockdev-reopen</c> takes the same set.
    /// </summary>
    public static Dictionary<string, object?> FormatNodeOptions(ChainLayer layer, string? backingNode, bool readOnly)
    {
        var options = new Dictionary<string, object?>
        {
            ["driver"] = layer.Format == VolumeFormat.Cow ? "qcow2" : "raw",
            ["node-name"] = FormatNode(layer),
            ["file"] = FileNode(layer),
            ["read-only"] = readOnly,
            ["discard"] = "unmap",
        };
        if (layer.Format == VolumeFormat.Cow) options["backing"] = backingNode;
        return options;
    }

    /// <summary>
    /// The file paths of a node's open chain, leaf first, from a <c>query-named-block-nodes</c> entry:
    /// each level of its <c>image</c>/<c>backing-image</c> names either a plain path or a <c>json:</c>
    /// description (explicit backing) whose <c>file.filename</c> is the path of that level.
    /// A running mirror puts its <c>mirror_top</c> filter above the active layer (and the export onto it); a filter
    /// names its child's file, so a level naming the same file as the one above it is that filter's child, not a layer.
    /// </summary>
    public static List<string> OpenChainLeafFirst(JsonElement blockDeviceInfo)
    {
        var paths = new List<string>();
        if (!blockDeviceInfo.TryGetProperty("image", out var image)) return paths;
        while (image.ValueKind == JsonValueKind.Object)
        {
            var path = PathOf(image.GetProperty("filename").GetString() ?? "");
            if (paths.Count == 0 || paths[^1] != path) paths.Add(path);
            if (!image.TryGetProperty("backing-image", out image)) break;
        }
        return paths;
    }

    private static string PathOf(string filename)
    {
        if (!filename.StartsWith("json:", StringComparison.Ordinal)) return filename;
        using var description = JsonDocument.Parse(filename["json:".Length..]);
        var file = description.RootElement.TryGetProperty("file", out var f) ? f : default;
        while (file.ValueKind == JsonValueKind.Object)
        {
            if (file.TryGetProperty("filename", out var name) && name.ValueKind == JsonValueKind.String)
                return name.GetString() ?? filename;
            if (!file.TryGetProperty("file", out file)) break; // a protocol layered over another (e.g. a filter)
        }
        return filename;
    }
}
