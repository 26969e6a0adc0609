-- Orthanc: forward every OCT series (Modality OPT) to kdoct once it is stable (no new instance for
-- Orthanc's StableAge seconds), as one C-STORE job over one association. Only OPT: kdoct's own results
-- (SR, DOC) and every other modality stay in the PACS, so nothing loops. The modality "kdoct" is
-- declared in DicomModalities (docs/INTEGRATION.md). A failed send is left in Orthanc's jobs list
-- (GET /jobs) to be resubmitted; kdoct itself refused nothing it could classify later.
-- (Lua's SendToModality takes one instance; a series goes through the REST API's store.)
function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'OPT' then
      RestApiPost('/modalities/kdoct/store', DumpJson({ Resources = { seriesId }, Synchronous = true }), false)
   end
end
